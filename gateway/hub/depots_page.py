"""The hub's "Data depots" page, /hub/depots: the logged-in user's depots, their access and size.

Registered with gateway.hub.api's handler by `gateway.hub.install_handlers()`. Only the logged-in user's
own depots are shown, from the same rule the spawner uses for the `depots/` links.

Sizes need a walk of the whole tree, which can take minutes on a big depot: it runs in a small
thread pool, never on the hub's event loop, stops at a time limit (the page then says "at least"),
and is cached; until a size is known the page says "computing…" and reloads itself.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from jupyterhub.handlers.base import BaseHandler
from tornado import web
from traitlets import Float, Int
from traitlets.config import Configurable

from gateway.depots.access import READ_WRITE, UserDepot, depots_for

PAGE_PATH = "/depots"
log = logging.getLogger("hpcgate.depots")


@dataclass(frozen=True)
class DirSize:
    bytes: int
    files: int
    complete: bool
    """False when the walk hit its time limit: the true size is larger."""
    error: str | None = None
    computed_at: float = 0.0


def tree_size(path: str, time_limit: float) -> DirSize:
    """Apparent size of every file under `path` (symlinks not followed), within `time_limit` s."""
    deadline = time.monotonic() + time_limit
    total = files = 0
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            return DirSize(0, 0, True, "not a directory", time.time())
    except FileNotFoundError:
        return DirSize(0, 0, True, "not provisioned yet", time.time())
    except OSError as err:
        return DirSize(0, 0, True, err.strerror or str(err), time.time())
    stack = [path]
    while stack:
        if time.monotonic() > deadline:
            return DirSize(total, files, False, None, time.time())
        current = stack.pop()
        try:
            with os.scandir(current) as entries:
                for entry in entries:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if stat.S_ISDIR(st.st_mode):
                        stack.append(entry.path)
                    elif stat.S_ISREG(st.st_mode):
                        total += st.st_size
                        files += 1
        except OSError:
            continue  # vanished or unreadable while walking: count what is there
    return DirSize(total, files, True, None, time.time())


class SizeCache:
    """Directory sizes computed in threads, cached for `ttl` seconds. Used on the event loop only."""

    def __init__(self, ttl: float = 300.0, time_limit: float = 30.0, workers: int = 2):
        self.ttl, self.time_limit = ttl, time_limit
        self._executor: ThreadPoolExecutor | None = None
        self._workers = workers
        self._known: dict[str, DirSize] = {}
        self._pending: dict[str, asyncio.Future[DirSize]] = {}

    def get(self, path: str) -> DirSize | None:
        """The last known size (possibly stale) or None; starts a computation when due."""
        known = self._known.get(path)
        if (known is None or time.time() - known.computed_at > self.ttl) and path not in self._pending:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self._workers, thread_name_prefix="depot-size")
            future = asyncio.get_running_loop().run_in_executor(
                self._executor, tree_size, path, self.time_limit)
            self._pending[path] = future
            future.add_done_callback(lambda f, p=path: self._done(p, f))
        return known

    def known(self) -> dict[str, DirSize]:
        """Every size measured so far, by path (for hpcgate's metrics)."""
        return dict(self._known)

    def _done(self, path: str, future: asyncio.Future[DirSize]) -> None:
        self._pending.pop(path, None)
        if future.cancelled():
            return
        err = future.exception()
        self._known[path] = (DirSize(0, 0, True, f"could not be measured ({err})", time.time())
                             if err else future.result())

    async def settle(self, paths: list[str], timeout: float) -> None:
        """Wait up to `timeout` for the pending sizes of `paths` (small depots show at once)."""
        waiting = [self._pending[p] for p in paths if p in self._pending]
        if waiting:
            await asyncio.wait([asyncio.shield(f) for f in waiting], timeout=timeout)


class DepotsPage(Configurable):
    """Settings of the hub's "Data depots" page (`c.DepotsPage.size_time_limit = 60`)."""

    size_ttl = Float(
        300.0, help="Seconds a depot's measured size is shown before it is measured again.",
    ).tag(config=True)
    size_time_limit = Float(
        30.0, help="Longest time one walk of a depot may take. A depot too big to walk in time is "
                   "shown as 'at least' the size counted so far.",
    ).tag(config=True)
    size_workers = Int(
        2, help="Threads measuring depot sizes (each walks one depot at a time).",
    ).tag(config=True)


_sizes: SizeCache | None = None


def sizes(config: Any = None) -> SizeCache:
    """The hub's one size cache, made with the hub's configuration at first use."""
    global _sizes
    if _sizes is None:
        page = DepotsPage(config=config) if config is not None else DepotsPage()
        _sizes = SizeCache(page.size_ttl, page.size_time_limit, page.size_workers)
    return _sizes


def cached_sizes() -> SizeCache | None:
    """The hub's size cache if the depots page made it (metrics never start a walk)."""
    return _sizes


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{n} byte{'s' if n != 1 else ''}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} bytes"


def size_text(size: DirSize | None) -> str:
    if size is None:
        return "computing…"
    if size.error:
        return size.error
    files = f"{size.files} file{'s' if size.files != 1 else ''}"
    if not size.complete:
        return f"at least {human_size(size.bytes)} ({files} counted before the time limit)"
    return f"{human_size(size.bytes)} ({files})"


TEMPLATE = """{% extends "page.html" %}
{% block title %}Data depots{% endblock title %}
{% block meta %}{{ super() }}{% if computing %}
<meta http-equiv="refresh" content="3">{% endif %}{% endblock meta %}
{% block main %}
<div class="container">
  <h1>Data depots</h1>
  <p>Shared project folders of your groups, on the cluster's filesystem. In your server they are
  in the <code>depots/</code> folder (links, nothing is copied); terminals and kernels can also use
  the paths below.</p>
  {% if message %}<div class="alert alert-warning" role="alert">{{ message }}</div>{% endif %}
  {% if rows %}
  <table class="table table-striped" id="depots">
    <thead><tr><th>Depot</th><th>Your access</th><th>Size</th><th>Path</th><th>About</th></tr></thead>
    <tbody>
    {% for row in rows %}
      <tr data-depot="{{ row.name }}">
        <td>{{ row.name }}</td><td>{{ row.access }}</td><td class="depot-size">{{ row.size }}</td>
        <td><code>{{ row.path }}</code></td><td>{{ row.description }}</td>
      </tr>
    {% endfor %}
    </tbody>
  </table>
  {% elif not message %}
  <p id="no-depots">None of your groups has a data depot.</p>
  {% endif %}
</div>
{% endblock main %}
"""


class DepotsHandler(BaseHandler):
    """GET /hub/depots: an HTML page for the logged-in user (others are sent to the login page)."""

    @web.authenticated
    async def get(self) -> None:
        message = ""
        rows: list[dict[str, str]] = []
        computing = False
        try:
            depots = await self._user_depots()
            cache = sizes(self.settings.get("config"))
            paths = [d.path for d in depots]
            for p in paths:
                cache.get(p)
            await cache.settle(paths, timeout=0.5)  # a small depot's size shows at once
            for d in depots:
                size = cache.get(d.path)
                computing |= size is None
                rows.append({"name": d.name, "path": d.path, "description": d.description,
                             "access": "read and write" if d.access == READ_WRITE else "read only",
                             "size": size_text(size)})
        except Exception:
            # A broken policy file or an unreachable directory must not become a 500.
            log.exception("Data depots page for %s", self.current_user.name)
            message = ("The list of data depots is not available right now; please try again "
                       "later or ask the cluster's administrators.")
        self.write(await self._render(rows=rows, message=message, computing=computing))

    async def _user_depots(self) -> list[UserDepot]:
        spawner: Any = self.current_user.spawner
        if not hasattr(spawner, "site_policy"):
            return []  # not hpcgate's spawner: no policy, no depots
        policy = spawner.site_policy()
        if policy is None:
            return []
        user, _ = await spawner.unix_account()
        return depots_for(policy, await spawner.user_groups(user))

    async def _render(self, **ns: Any) -> str:
        namespace = {**self.template_namespace, "xsrf_token": self.xsrf_token.decode("ascii"), **ns}
        try:
            template = self.settings["jinja2_env"].from_string(TEMPLATE)
            return await template.render_async(**namespace)
        except Exception:
            log.exception("Rendering the data depots page")
        # The hub's templates failed (customised, broken): a plain page still says it all.
        from html import escape

        body = "".join(f"<li>{escape(r['name'])}: {escape(r['access'])}, {escape(r['size'])}, "
                       f"<code>{escape(r['path'])}</code></li>" for r in ns["rows"])
        note = f"<p>{escape(ns['message'])}</p>" if ns["message"] else ""
        return f"<!DOCTYPE html><title>Data depots</title><h1>Data depots</h1>{note}<ul>{body}</ul>"
