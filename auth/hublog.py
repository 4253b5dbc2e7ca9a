"""hpcgate's loggers ("hpcgate.*") write through the hub's own log handlers and format.

Modules log to `logging.getLogger("hpcgate.<part>")`; without this their lines reached the hub's
output bare (no time, level or logger) through Python's last-resort handler. The authenticator
and the spawner call `follow_hub_log` with JupyterHub's application logger when they are made.
"""

from __future__ import annotations

import logging
from typing import Any

ROOT = "hpcgate"


def follow_hub_log(app_log: Any) -> logging.Logger:
    """Give the "hpcgate" logger the hub logger's handlers and level (once is enough; calling it
    again with the same logger changes nothing)."""
    hub = getattr(app_log, "logger", app_log)  # a LoggerAdapter wraps the logger
    ours = logging.getLogger(ROOT)
    if isinstance(hub, logging.Logger) and hub.handlers and ours.handlers != hub.handlers:
        ours.handlers = list(hub.handlers)
        ours.setLevel(hub.getEffectiveLevel())
        ours.propagate = False  # the hub's handlers already print it: no second copy via root
    return ours
