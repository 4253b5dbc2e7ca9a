"""The session as JupyterLab sees it: GET {base_url}hpcgate/session in the user's server.

The hpcgate-session JupyterLab extension (labextension/ in the repository) reads it to show the
time left, to warn at the site policy's thresholds and to say "this session reached its time
limit" instead of JupyterLab's generic "server unavailable". The answer is the hub's own card for
this server (the scheduler's end time, the thresholds, how the job is ending), asked of the hub
with the server's own token over the path its reports take (a reverse tunnel's Unix socket
included), and cached for a few seconds so that any number of open tabs cost one hub call.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any
from urllib.parse import quote

from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.application import ExtensionApp
from tornado import web
from traitlets import Float

FIELDS = ("state", "job_id", "node", "ends", "seconds_left", "warnings", "warning", "ending",
          "request")


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    return [{"module": "gateway.job.session", "app": SessionInfo}]


class SessionInfo(ExtensionApp):
    """Serves hpcgate/session: this server's session card from the hub, cached."""

    name = "hpcgate_session"
    load_other_extensions = True
    cache_seconds = Float(10.0, config=True, help="Seconds one answer of the hub is reused.")

    def initialize_handlers(self) -> None:
        self._card: dict[str, Any] = {}
        self._at = 0.0
        self._lock = asyncio.Lock()
        # ExtensionApp puts the server's base_url in front of its handlers' routes.
        self.handlers.append((r"/hpcgate/session", SessionHandler, {"info": self}))

    async def card(self) -> dict[str, Any]:
        async with self._lock:
            if time.monotonic() - self._at > self.cache_seconds:
                fetched = await asyncio.to_thread(fetch_card)
                if fetched is not None:  # a hub away for a moment: keep the last answer
                    self._card, self._at = fetched, time.monotonic()
            # The launcher's SIGUSR2 handler says so at once, before the hub's card can.
            ending = os.environ.get("HPCGATE_ENDING") or self._card.get("ending")
            return {**self._card, "ending": ending, "now": time.time()}


def fetch_card() -> dict[str, Any] | None:
    from gateway.job.launcher import hub_request

    url = os.environ.get("JUPYTERHUB_API_URL", "").rstrip("/")
    token = os.environ.get("JUPYTERHUB_API_TOKEN", "")
    if not url or not token:
        return None
    name = os.environ.get("JUPYTERHUB_SERVER_NAME", "")
    try:
        status, body = hub_request("GET", f"{url}/hpcgate/report?server_name={quote(name)}", None,
                                   token, timeout=5)
        doc = json.loads(body) if status == 200 else None
    except (OSError, ValueError):
        return None
    return {k: doc.get(k) for k in FIELDS} if isinstance(doc, dict) else None


class SessionHandler(APIHandler):
    def initialize(self, info: SessionInfo) -> None:
        self.info = info

    @web.authenticated
    async def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(await self.info.card()))
