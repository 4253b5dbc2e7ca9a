"""The portal's pages: the sessions page (JupyterHub's /hub/home, through our home.html), the
operator view (/hub/sessions/all), and the nav bar and walltime banner every hub page shares
(our page.html, which extends JupyterHub's own).

The templates live in gateway/hub/templates/; `gateway.hub.configure()` puts that directory
first in `JupyterHub.template_paths`.
"""

from __future__ import annotations

from pathlib import Path

from jupyterhub.handlers.base import BaseHandler
from tornado import web

from gateway.hub.sessions_api import sees_everyone

TEMPLATE_DIR = str(Path(__file__).parent / "templates")
OPERATOR_PATH = "/sessions/all"


class OperatorSessionsHandler(BaseHandler):
    """Every session on the hub, for operators: filter, and stop (never open: the role has no
    access to servers)."""

    @web.authenticated
    async def get(self) -> None:
        if not sees_everyone(self):
            raise web.HTTPError(403, "Only the portal's operators may see every session.")
        html = await self.render_template("hpcgate-operator.html")
        self.finish(html)
