"""The hub's Activity page, /hub/activity, and its downloads, /hub/activity/export.

Each user sees the timeline of their own kernel executions (per hour by kernel, errors marked,
sessions and kernels underneath) over a range they pick, and every record kept about them;
viewers of a group (the policy's `activity.viewers`) also pick one of its members or the group's
aggregate; admins and operators anyone. Who may see what is decided in `activity_access` on every
request; what the hub does not allow it answers with 403 and the same sentence whether or not
the user exists. Store reads and the summaries run off the event loop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from importlib import resources
from typing import Any
from urllib.parse import urlencode

from jupyterhub.handlers.base import BaseHandler
from tornado import web

from gateway.hub.activity_access import (
    ActivityScope,
    group_members,
    hub_policy,
    request_scope,
    retention_of,
)
from gateway.hub.activity_view import (
    TimeRange,
    chart,
    day_text,
    export_filename,
    summarize,
    time_range,
    time_text,
    to_csv,
    to_jsonl,
)

PAGE_PATH = "/activity"
EXPORT_PATH = "/activity/export"
RECENT = 200  # records listed on the page; the downloads hold them all
NOT_YOURS = "You may not see this activity history."
log = logging.getLogger("hpcgate.activity")


def store(settings: dict[str, Any]) -> Any:
    from gateway.hub.activity_store import ActivityStore

    return ActivityStore.instance(config=settings.get("config"))


class Target:
    """Whose records a request is about: one user, or a group's members."""

    def __init__(self, users: list[str], label: str, group: str | None = None):
        self.users, self.label, self.group = users, label, group


class ActivityRequest(BaseHandler):
    """What the page and the export share: the policy, the scope, the target, the range."""

    async def prepare_activity(self) -> tuple[ActivityScope, Target, TimeRange, Any]:
        policy = await asyncio.to_thread(hub_policy, self.settings.get("config"))
        retention = retention_of(policy)
        store(self.settings).keep_purging(lambda: retention_of(
            hub_policy(self.settings.get("config"))))
        scope = await request_scope(self, policy)
        target = await self._target(scope)
        try:
            rng = time_range(self.get_argument("since", None) or None,
                             self.get_argument("until", None) or None, time.time(), retention)
        except ValueError as err:
            raise web.HTTPError(400, str(err)) from None
        return scope, target, rng, policy

    async def _target(self, scope: ActivityScope) -> Target:
        group = self.get_argument("group", "") or ""
        user = self.get_argument("user", "") or ""
        if group:
            if not (scope.everyone or scope.allows_group(group)):
                raise web.HTTPError(403, NOT_YOURS)
            return Target(await group_members(self, group), f"group {group}", group)
        user = user or scope.own or ""
        if not user or not scope.allows_user(user):
            raise web.HTTPError(403, NOT_YOURS)
        return Target([user], user)


class ActivityPageHandler(ActivityRequest):
    """GET /hub/activity[?user=U|group=G][&since=..][&until=..]"""

    @web.authenticated
    async def get(self) -> None:
        scope, target, rng, policy = await self.prepare_activity()
        db = store(self.settings)
        records = await db.records_of(target.users, rng.since, rng.until)
        summary = await asyncio.to_thread(summarize, records, rng,
                                          "user" if target.group else "kernel")
        recent = list(reversed(records[-RECENT:]))
        oldest = await db.oldest(target.users)
        choices = sorted(set(scope.users) | ({scope.own} if scope.own else set()))
        if scope.everyone:
            choices = sorted(set(choices) | set(await db.users()))
        params = {k: v for k, v in (("since", day_text(rng.since)), ("until", day_text(rng.until)),
                                    ("group" if target.group else "user",
                                     target.group or target.users[0])) if v}
        retention = retention_of(policy)
        ns = {
            "target": target, "scope": scope, "summary": summary, "chart": chart(summary),
            "recent": recent, "shown": len(recent), "total": len(records),
            "since": day_text(rng.since), "until": day_text(rng.until), "clipped": rng.clipped,
            "retention_days": round(retention.total_seconds() / 86400, 1),
            "cutoff": day_text(time.time() - retention.total_seconds()),
            "oldest": time_text(oldest) if oldest else None,
            "user_choices": choices, "group_choices": list(scope.groups),
            "csv_url": f"{self.hub.base_url}activity/export?{urlencode({**params, 'format': 'csv'})}",
            "jsonl_url": f"{self.hub.base_url}activity/export?"
                         f"{urlencode({**params, 'format': 'jsonl'})}",
            "page_url": f"{self.hub.base_url}activity", "time_text": time_text,
            "hourly": rng.hourly, "ms": _ms, "recording": policy.activity.record,
        }
        self.write(await self._render(ns))

    async def _render(self, ns: dict[str, Any]) -> str:
        namespace = {**self.template_namespace, "xsrf_token": self.xsrf_token.decode("ascii"), **ns}
        try:
            text = await asyncio.to_thread(template_text)  # read once, off the loop
            template = self.settings["jinja2_env"].from_string(text)
            return await template.render_async(**namespace)
        except Exception:
            log.exception("Rendering the activity page")
        # The hub's templates failed (customised, broken): a plain page still says it all.
        from html import escape

        s = ns["summary"]
        return (f"<!DOCTYPE html><title>Activity</title><h1>Activity of "
                f"{escape(ns['target'].label)}</h1><p>{s.executions} executions, {s.errors} "
                f"errors, {ns['since']} to {ns['until']}.</p><p><a href=\"{escape(ns['csv_url'])}\">"
                "Download CSV</a></p>")


def _ms(value: Any) -> str:
    if not isinstance(value, (int, float)):  # None, or Jinja's Undefined for an event record
        return ""
    return f"{value:.0f} ms" if value < 10_000 else f"{value / 1000:.1f} s"


class ActivityExportHandler(ActivityRequest):
    """GET /hub/activity/export?format=csv|jsonl plus the page's own parameters: a download of
    every record the page's view covers."""

    @web.authenticated
    async def get(self) -> None:
        fmt = self.get_argument("format", "csv")
        if fmt not in ("csv", "jsonl"):
            raise web.HTTPError(400, "format must be csv or jsonl")
        _, target, rng, _ = await self.prepare_activity()
        records = await store(self.settings).records_of(target.users, rng.since, rng.until)
        body = await asyncio.to_thread(to_csv if fmt == "csv" else to_jsonl, records)
        self.set_header("Content-Type", "text/csv; charset=utf-8" if fmt == "csv"
                        else "application/x-ndjson; charset=utf-8")
        self.set_header("Content-Disposition", 'attachment; filename="'
                        f'{export_filename(target.group or target.users[0], rng, fmt)}"')
        self.set_header("X-Content-Type-Options", "nosniff")
        self.write(body)


@functools.cache
def template_text() -> str:
    """The page's Jinja template (gateway/hub/activity.html; it extends JupyterHub's page.html)."""
    return resources.files("gateway.hub").joinpath("activity.html").read_text()
