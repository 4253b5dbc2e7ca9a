"""The hub process: the spawner, connection modes, the scheduler connection, hub pages and APIs.

JupyterHub builds its routes once, from its handler lists, when it starts. hpcgate's own routes
are added by one explicit call in the hub's configuration (never as a side effect of an import):

    from gateway.hub import install_handlers
    install_handlers()
"""

from __future__ import annotations

from typing import Any


def _routes() -> tuple[tuple[list[Any], str, type], ...]:
    from jupyterhub import apihandlers, handlers

    from gateway.hub.api import REPORT_PATH, ServerAddressHandler
    from gateway.hub.depots_page import PAGE_PATH, DepotsHandler

    return ((apihandlers.default_handlers, REPORT_PATH, ServerAddressHandler),
            (handlers.default_handlers, PAGE_PATH, DepotsHandler))


def install_handlers() -> None:
    """Add the launcher's report API (/hub/api/hpcgate/report) and the depots page (/hub/depots)
    to JupyterHub's handlers. Call it from jupyterhub_config.py; calling it twice is harmless."""
    for table, path, handler in _routes():
        if not any(route[0] == path for route in table):
            table.append((path, handler))


def handlers_installed() -> bool:
    """Whether install_handlers() ran in this process (the spawner refuses to start otherwise:
    its launcher could never report where the server listens)."""
    return all(any(route[0] == path and route[1] is handler for route in table)
               for table, path, handler in _routes())
