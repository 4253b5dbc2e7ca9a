"""The hub API the launcher in a job calls to say where its server listens.

JupyterHub has no such API; `gateway.hub.install_handlers()`, called from the hub's
configuration, adds this handler to the hub's API handlers (`JupyterHub.extra_handlers` is
deprecated). Unlike batchspawner's, it accepts only a host and a port, only with that very
server's own token, and only a host that is the job's node.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import re
from typing import Any

from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.scopes import needs_scope
from tornado import web

REPORT_PATH = "/api/hpcgate/report"
HEALTH_PATH = "/api/hpcgate/health"
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")


def token_digest(token: str) -> str:
    """What the spawner keeps to recognise its server's token (never the token itself)."""
    return hashlib.sha256(token.encode()).hexdigest()


def parse_report(body: bytes) -> tuple[str, str, int]:
    """(server name, host, port) from the launcher's JSON, or HTTPError 400 with the reason."""
    try:
        doc = json.loads(body)
    except ValueError as err:
        raise web.HTTPError(400, "the body must be JSON") from err
    if not isinstance(doc, dict) or set(doc) - {"server_name", "host", "port"}:
        raise web.HTTPError(400, "only server_name, host and port are accepted")
    name, host, port = doc.get("server_name", ""), doc.get("host"), doc.get("port")
    if not isinstance(name, str) or not isinstance(host, str) or not _HOSTNAME.match(host):
        raise web.HTTPError(400, "server_name and host must be strings; host a name or address")
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise web.HTTPError(400, "port must be a number from 1 to 65535")
    return name, host, port


def same_host(reported: str, expected: str) -> bool:
    try:
        return ipaddress.ip_address(reported) == ipaddress.ip_address(expected)
    except ValueError:
        return reported == expected


ENDINGS = ("time-limit",)


def parse_ending(body: bytes) -> tuple[str, str] | None:
    """(server name, ending) when the launcher reports how its job ends ({"server_name",
    "ending": "time-limit"}); None for any other body (an address report)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if not isinstance(doc, dict) or "ending" not in doc:
        return None
    if set(doc) - {"server_name", "ending"} or doc["ending"] not in ENDINGS:
        raise web.HTTPError(400, f"ending must be one of {', '.join(ENDINGS)}")
    name = doc.get("server_name", "")
    if not isinstance(name, str):
        raise web.HTTPError(400, "server_name must be a string")
    return name, doc["ending"]


class ServerAddressHandler(APIHandler):
    """POST {host, port, server_name}: the job's server is listening there. POST {server_name,
    ending}: the job is ending on its own (its walltime is near), so the portal says so."""

    @web.authenticated
    async def post(self) -> None:
        ending = parse_ending(self.request.body)
        if ending is not None:
            self._own_spawner(ending[0]).ending_reported(ending[1])
            self.write({"ok": True})
            return
        name, host, port = parse_report(self.request.body)
        spawner = self._own_spawner(name)
        await spawner.address_reported(host, port)
        self.set_status(200)
        self.write({"ok": True})

    @web.authenticated
    async def get(self) -> None:
        """GET ?server_name=NAME with that server's own token: its session card (the time left,
        the warnings, how it is ending), for JupyterLab inside the job (gateway.job.session)."""
        from gateway.hub.sessions_api import server_card

        spawner = self._own_spawner(self.get_argument("server_name", ""))
        self.write(await server_card(spawner))

    def _own_spawner(self, name: str) -> Any:
        user = self.current_user
        token = self.get_auth_token() or ""
        spawner: Any = user.spawners.get(name) if hasattr(user, "spawners") else None
        expected = getattr(spawner, "token_digest", None)
        if spawner is None or not expected or not hmac.compare_digest(expected, token_digest(token)):
            # Only the server's own token may say where that server is.
            raise web.HTTPError(403, "this token does not belong to that server")
        return spawner


class WatcherHealthHandler(APIHandler):
    """GET /hub/api/hpcgate/health: for operators (read:hub), whether the hub's scheduler
    queries work, since when they fail and why."""

    @needs_scope("read:hub")
    async def get(self) -> None:
        from gateway.hub.scheduling import health

        watchers = health()
        self.write({"ok": all(w["ok"] for w in watchers), "watchers": watchers})


ACTIVITY_PATH = "/api/hpcgate/activity"
MAX_BATCH = 1000
MAX_READ = 10_000  # records per GET; the page's export has them all


def check_records(body: bytes, user: str, server: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(records to store, [{id, reason}] refused) from a server's batch. Only records of that
    very server (its user, its name) that follow the schema are kept."""
    from gateway.job.activity.records import problems

    try:
        doc = json.loads(body)
    except ValueError as err:
        raise web.HTTPError(400, "the body must be JSON") from err
    records = doc.get("records") if isinstance(doc, dict) else None
    if not isinstance(records, list) or len(records) > MAX_BATCH:
        raise web.HTTPError(400, f"the body must be {{'records': [...]}} with at most {MAX_BATCH}")
    good, refused = [], []
    for rec in records:
        rid = rec.get("id") if isinstance(rec, dict) else None
        found = problems(rec)
        if found:
            refused.append({"id": rid, "reason": "; ".join(found)[:500]})
        elif rec["user"] != user or rec["server"] != server:
            refused.append({"id": rid, "reason": "the record belongs to another server"})
        else:
            good.append(rec)
    return good, refused


def server_of_token(spawners: dict[str, Any], token: str) -> Any:
    """The user's server (spawner) whose own token this is; None for any other token."""
    digest = token_digest(token)
    return next((s for s in spawners.values() if getattr(s, "token_digest", None)
                 and hmac.compare_digest(s.token_digest, digest)), None)


class ActivityRecordsHandler(APIHandler):
    """POST {records: [...]}: a server's activity records, with that server's own token. Answers
    {stored: [ids], rejected: [{id, reason}]}; storing an id twice is harmless.

    GET ?user=U&since=T&until=T&limit=N: U's records (default: the caller's own), oldest first,
    for whoever may see them (gateway.hub.activity_access); 403 for anyone else, whether or not
    U exists."""

    @web.authenticated
    async def get(self) -> None:
        import time

        from gateway.hub.activity_access import hub_policy, request_scope, retention_of
        from gateway.hub.activity_store import ActivityStore
        from gateway.hub.activity_view import time_range

        policy = await asyncio.to_thread(hub_policy, self.settings.get("config"))
        scope = await request_scope(self, policy)
        user = self.get_argument("user", "") or scope.own or ""
        if not user or not scope.allows_user(user):
            raise web.HTTPError(403, "You may not see this activity history.")
        try:
            rng = time_range(self.get_argument("since", None) or None,
                             self.get_argument("until", None) or None, time.time(),
                             retention_of(policy))
            limit = int(self.get_argument("limit", str(MAX_READ)))
        except ValueError as err:
            raise web.HTTPError(400, str(err)) from None
        store = ActivityStore.instance(config=self.settings.get("config"))
        records = await store.records_of([user], rng.since, rng.until,
                                         limit=max(1, min(limit, MAX_READ)))
        self.write({"user": user, "since": rng.since, "until": rng.until, "records": records})

    @web.authenticated
    async def post(self) -> None:
        from gateway.hub.activity_store import ActivityStore
        from gateway.policy.model import Activity

        user = self.current_user
        spawner = server_of_token(getattr(user, "spawners", {}), self.get_auth_token() or "")
        if spawner is None:  # a user's other tokens cannot write: only their servers record
            raise web.HTTPError(403, "only a server's own token may deliver its activity")
        good, refused = await asyncio.to_thread(check_records, self.request.body, user.name,
                                                spawner.name)
        try:
            retention = spawner.site_policy().activity.retention
        except Exception:  # the policy cannot be read now: keep records at least as long as default
            retention = Activity().retention
        store = ActivityStore.instance(config=self.settings.get("config"))
        stored = await store.insert(good, retention) if good else []
        self.write({"stored": stored, "rejected": refused})
