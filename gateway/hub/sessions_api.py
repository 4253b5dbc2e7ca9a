"""The sessions API under /hub/api/hpcgate/sessions, read by the sessions page and its banner.

    GET /hub/api/hpcgate/sessions              the caller's own sessions (any logged-in user)
    GET /hub/api/hpcgate/sessions?all=1        every user's sessions (read:servers on all users:
                                               the hub-operator role, admins)
    GET /hub/api/hpcgate/sessions/USER         one user's sessions (read:servers for that user)
    GET /hub/api/hpcgate/sessions/USER/log?server=NAME
                                               the tail of that server's job output, read as
                                               the user through the scheduler's runner
                                               (access:servers: the user, never an operator)

JupyterHub's scopes decide; a user without the scope for another user gets 404 or 403.
"""

from __future__ import annotations

import time
from typing import Any

from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.scopes import Scope, needs_scope
from tornado import web

from gateway.hub.jobspec import warning_seconds
from gateway.hub.sessions import describe

SESSIONS_PATH = "/api/hpcgate/sessions"
USER_SESSIONS_PATH = r"/api/hpcgate/sessions/(?P<user_name>[^/]+)"
LOG_PATH = r"/api/hpcgate/sessions/(?P<user_name>[^/]+)/log"
LOG_BYTES = 64 * 1024


def sees_everyone(handler: Any) -> bool:
    """Whether the caller may read every user's servers (operators, admins)."""
    return handler.parsed_scopes.get("read:servers") is Scope.ALL


async def server_card(spawner: Any) -> dict[str, Any]:
    """One server's card, with the scheduler's live details when the hub can reach them."""
    watcher = scheduler = None
    warnings: tuple[int, ...] = ()
    try:
        scheduler, _, watcher = spawner.scheduler_connection()
        warnings = warning_seconds(spawner.site_policy())
    except Exception:  # noqa: BLE001 - a card without live details beats no page at all
        spawner.log.debug("no scheduler details for %s", spawner._log_name, exc_info=True)
    return await describe(spawner, watcher, scheduler, warnings)


async def user_sessions(user: Any) -> dict[str, Any]:
    """Every server of `user` worth a card (active, or with a history), default first."""
    # Every server the database knows (user.spawners only holds those loaded since the hub
    # started: a stopped server with a history would be missing after a restart).
    names = sorted(set(user.orm_spawners) | {""}, key=lambda n: (n != "", n))
    cards = [await server_card(user.spawners[name]) for name in names
             if user.spawners[name].active or user.spawners[name].history or name == ""]
    return {"user": user.name, "max_servers": await _max_servers(user), "sessions": cards}


async def _max_servers(user: Any) -> int:
    from gateway.policy.rules import rules_for

    spawner = user.spawner
    try:
        policy = spawner.site_policy()
        name, _ = await spawner.unix_account()
        return rules_for(policy, await spawner.user_groups(name)).max_servers
    except Exception:  # noqa: BLE001 - the page still shows the sessions; the form will explain
        return 1


class SessionsHandler(APIHandler):
    """GET: the caller's sessions; with ?all=1 (operators) everyone's."""

    @web.authenticated
    async def get(self) -> None:
        me = self.current_user
        if self.get_argument("all", "") in ("1", "true"):
            if not sees_everyone(self):
                raise web.HTTPError(403, "only operators may list every user's sessions")
            from jupyterhub import orm

            users = [self.users[u] for u in self.db.query(orm.User) if u.orm_spawners]
            out = [await user_sessions(u) for u in users]
            self.write({"now": time.time(), "users": out})
            return
        if not hasattr(me, "spawners"):
            raise web.HTTPError(400, "only users have sessions")
        self.write({"now": time.time(), **await user_sessions(me)})


class UserSessionsHandler(APIHandler):
    """GET: one user's sessions, for whoever may read that user's servers."""

    @needs_scope("read:servers")
    async def get(self, user_name: str) -> None:
        user = self.find_user(user_name)
        if user is None:
            raise web.HTTPError(404)
        self.write({"now": time.time(), **await user_sessions(user)})


class JobLogHandler(APIHandler):
    """GET ?server=NAME: the last 64 KiB of the server's job output (the launcher's lines, the
    server's log, the scheduler's own messages), read as the user."""

    @needs_scope("access:servers")
    async def get(self, user_name: str) -> None:
        user = self.find_user(user_name)
        if user is None:
            raise web.HTTPError(404)
        name = self.get_argument("server", "")
        if name not in user.orm_spawners and name != "":
            raise web.HTTPError(404, "no such server")
        spawner = user.spawners[name]
        text, note = await job_log(spawner)
        self.write({"server": name, "log": text, "note": note})


async def job_log(spawner: Any) -> tuple[str, str]:
    """(the tail of the job's output, a sentence when it cannot be read)."""
    from gateway.hub.jobspec import job_setup
    from schedulers.errors import SchedulerError

    try:
        _, runner, _ = spawner.scheduler_connection()
        unix_user, home = await spawner.unix_account()
        setup = job_setup(spawner.site_policy(), unix_user, home, spawner.name)
        res = await runner.run(["tail", "-c", str(LOG_BYTES), f"{setup.server_dir}/job.log"],
                               user=unix_user, timeout=10)
    except (SchedulerError, OSError) as err:
        return "", f"The job's output could not be read: {err}"
    except Exception as err:  # noqa: BLE001 - SpawnException and the like: say it, never a 500
        return "", f"The job's output could not be read: {getattr(err, 'message', None) or err}"
    if res.returncode != 0:
        return "", "This server has no job output yet."
    text = res.stdout
    if len(text.encode()) >= LOG_BYTES:
        text = text.split("\n", 1)[-1]  # drop the line cut in half
    return text, ""
