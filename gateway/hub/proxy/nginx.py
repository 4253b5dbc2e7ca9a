"""`hpcgate-nginx`: JupyterHub's Proxy API on Debian's nginx."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from jupyterhub.proxy import Proxy
from jupyterhub.utils import url_path_join
from tornado.ioloop import PeriodicCallback
from traitlets import Bool, Float, Integer, List, Unicode, default

from gateway.hub.proxy.render import (
    GENERATION_PATH,
    ROUTES_PATH,
    Settings,
    Target,
    needs_resolving,
    parse_routespec,
    parse_target,
    render_http,
    render_main,
    table_line,
)

STATE_FILE = "routes.json"
OLD_WORKERS_GRACE = 0.15  # seconds; used when the site's nginx master is unknown (no pid_file)
CONF_FILE = "nginx.conf"
TABLE_FILE = "table"  # routes.json as the route table's lines, for a fresh nginx (in private/)


class NginxProxy(Proxy):
    """JupyterHub's routes served by nginx (the `jupyterhub.proxies` entry point `hpcgate-nginx`).

    Routes live in `state_dir/routes.json`, the persisted truth. Either way nginx proxies with no
    buffering either way, no body size cap, websockets upgraded, keepalive to upstreams, and
    `X-Real-IP`/`X-Forwarded-For` set from the peer address, overwriting what the client sent;
    the most specific prefix wins, as in CHP.

    With `should_start` (the default) the hub runs nginx in the foreground, as its child, with a
    configuration in `state_dir`, listening on JupyterHub's public URL. A hub restarted after a
    crash adopts the nginx still running from its pid file, so users' connections survive. There,
    with `dynamic_routes` (the default), the configuration holds no route: the route table lives
    in nginx's shared memory (Debian's lua-nginx-module, `hpcgate_routes.lua`), each request
    picks its route there, and the hub sends each change over the status listener, a unix socket
    in a 0700 directory of its own. A change is served by every worker when `add_route` returns,
    no reload and no connection touched: about 2 ms with 1,000 routes, most of it writing
    routes.json. nginx started (again) loads the table, written from routes.json, in its master
    before its first request; nginx adopted gets it whole from routes.json too.

    Otherwise (`should_start = False`: a site's own nginx includes `include_file` in its `http {}`
    block and the hub runs `reload_command`, an argv list, never a shell string; or
    `dynamic_routes = False`) routes are rendered to the configuration: one `location` per route
    prefix, one `server` per host for host routes, one upstream per target. Changes made together,
    or while a reload runs, go out in one graceful reload (SIGHUP: open connections finish on the
    old workers); `add_route` returns once nginx serves the new configuration and no old worker
    accepts connections any more. nginx takes a new SIGHUP only 100 ms after the previous reload
    forked its workers, so one caller making changes back to back waits about that long for
    each; see `_retire_old_workers`. With 1,000 routes a reload costs 100-200 ms.

    Route data carries no `last_activity` (as with traefik-proxy): JupyterHub's
    `update_last_activity` skips such routes, and idle culling relies on the activity the
    single-user servers report to the hub API themselves (`JUPYTERHUB_ACTIVITY_URL`, which
    jupyterhub-singleuser posts to periodically and which the spawner passes on).
    """

    state_dir = Unicode(
        "nginx-proxy", config=True,
        help="Directory for the routes (routes.json), the generated configuration, nginx's pid "
             "file, logs and temporary files. Relative to the hub's working directory.")
    nginx_path = Unicode(
        config=True, help="The nginx binary the hub starts (with should_start).")

    @default("nginx_path")
    def _nginx_path_default(self) -> str:
        return shutil.which("nginx") or "/usr/sbin/nginx"

    pid_file = Unicode(
        "", config=True,
        help="nginx's pid file; default: state_dir/nginx.pid. With should_start = False, the site "
             "nginx's pid file, if the hub may read it: a route change then waits exactly until the "
             "old workers stop accepting, rather than a fixed 0.15 s.")
    listen = List(
        Unicode(), config=True,
        help="Addresses nginx listens on for users (nginx `listen` syntax, e.g. '127.0.0.1:8000'); "
             "default: the host and port of JupyterHub's public URL (JupyterHub.ip, JupyterHub.port).")
    status_listen = Unicode(
        "", config=True,
        help="Where nginx answers the hub's generation check: 'unix:/path' or '127.0.0.1:PORT' "
             "(loopback only). With dynamic_routes route changes arrive there too: then only a "
             "unix socket, in a directory only the hub can enter. Default: a unix socket in "
             "state_dir (state_dir/private with dynamic_routes).")
    worker_processes = Unicode("auto", config=True, help="nginx's worker_processes.")
    batch_window = Float(
        0, config=True,
        help="Seconds to wait for more route changes before one reload covers them all. Changes "
             "made in the same event-loop turn (asyncio.gather) and changes made while a reload "
             "runs go out together in one reload anyway.")
    reload_timeout = Float(
        15, config=True, help="Seconds a reload may take before the route change fails.")
    upstream_timeout = Integer(
        86400, config=True,
        help="Seconds a proxied connection may stay silent (kernels' websockets idle for hours).")
    access_log = Unicode("", config=True, help="nginx's access log file; empty: no access log.")
    include_file = Unicode(
        "", config=True,
        help="With should_start = False: the file the site's nginx includes in its http {} block.")
    reload_command = List(
        Unicode(), default_value=["nginx", "-s", "reload"], config=True,
        help="With should_start = False: the argv that makes the site's nginx reload.")
    check_running_interval = Integer(
        5, config=True, help="Seconds between checks that the hub's nginx still runs.")
    dynamic_routes = Bool(
        True, config=True,
        help="With should_start: keep the routes in nginx's shared memory (lua-nginx-module, "
             "Debian's libnginx-mod-http-lua) and change them without a reload, in 1-2 ms. "
             "False: one location per route, and a reload (100-200 ms with 1,000 "
             "routes) per change, as with should_start = False.")
    lua_modules = List(
        Unicode(), default_value=["/usr/lib/nginx/modules/ndk_http_module.so",
                                  "/usr/lib/nginx/modules/ngx_http_lua_module.so"], config=True,
        help="With dynamic_routes: the nginx modules to load (Debian's paths), in this order.")
    route_table_size = Integer(
        16, config=True,
        help="With dynamic_routes: MiB of shared memory for the route table (a route takes about "
             "200 bytes). A change that does not fit fails; no route is ever evicted.")

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._routes: dict[str, dict[str, Any]] | None = None  # what the hub sees, pending included
        self._committed: dict[str, dict[str, Any]] = {}  # what nginx serves
        self._changes: list[tuple[str, dict[str, Any] | None]] = []  # not yet in a reload
        self._generation = 0
        self._batch: asyncio.Future[None] | None = None
        self._apply_lock = asyncio.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None
        self._checker: PeriodicCallback | None = None
        self._known_workers: dict[int, bytes] = {}  # to end orphans if the master dies
        self._tested: tuple[str, frozenset[str]] | None = None  # see _needs_test
        self._addresses: dict[str, str] = {}  # DNS names in targets -> the address last resolved
        self._full_sync = True  # dynamic routes: send the whole table next (nginx may lack some)

    # -- paths and state -------------------------------------------------------------------

    @property
    def dir(self) -> Path:
        return Path(self.state_dir).absolute()

    @property
    def conf_path(self) -> Path:
        return self.dir / CONF_FILE

    @property
    def nginx_pid_file(self) -> Path:
        return Path(self.pid_file).absolute() if self.pid_file else self.dir / "nginx.pid"

    @property
    def dynamic(self) -> bool:
        """Routes in nginx's shared memory, changed without a reload (see the class docstring)."""
        return bool(self.should_start and self.dynamic_routes)

    @property
    def status_address(self) -> str:
        if self.status_listen:
            return self.status_listen
        # Route changes arrive on it: in a directory only the hub (and root) may enter.
        return f"unix:{self.dir / 'private' / 'status.sock'}" if self.dynamic \
            else f"unix:{self.dir / 'status.sock'}"

    def _load(self) -> dict[str, dict[str, Any]]:
        if self._routes is None:
            try:
                state = json.loads((self.dir / STATE_FILE).read_text())
            except FileNotFoundError:
                state = {"generation": 0, "routes": {}}
            self._generation = int(state["generation"])
            self._committed = state["routes"]
            self._routes = {k: dict(v) for k, v in self._committed.items()}
        return self._routes

    def _settings(self, generation: int) -> Settings:
        if self.app is not None and getattr(self.app, "internal_ssl", False):
            # Targets would need the hub's internal client certificates: not written yet.
            raise ValueError("hpcgate-nginx does not support JupyterHub.internal_ssl")
        if bool(self.ssl_cert) != bool(self.ssl_key):
            raise ValueError("hpcgate-nginx needs both JupyterHub.ssl_cert and ssl_key, or neither")
        error_target = url_path_join(self.hub.url, "error") if self.hub is not None else ""
        return Settings(listen=tuple(self._listen_addresses()), status_listen=self.status_address,
                        generation=generation, error_target=error_target,
                        timeout=self.upstream_timeout,
                        tls=(self.ssl_cert, self.ssl_key) if self.ssl_cert else None,
                        lua_dir=str(Path(__file__).parent) if self.dynamic else "",
                        table_size_mb=self.route_table_size,
                        table_file=str(self.dir / "private" / TABLE_FILE))

    def _listen_addresses(self) -> list[str]:
        if self.listen:
            return list(self.listen)
        url = urlsplit(self.public_url or "http://127.0.0.1:8000/")
        if url.scheme not in ("http", "https"):
            raise ValueError(f"hpcgate-nginx cannot listen on {self.public_url!r}")
        port = url.port or (443 if url.scheme == "https" else 80)
        host = url.hostname or ""
        if not host:  # JupyterHub.ip = "" means every interface, for CHP as here
            return [f"{port}"]
        return [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]

    # -- the proxy contract ----------------------------------------------------------------

    async def add_route(self, routespec: str, target: str, data: dict[str, Any]) -> None:
        routespec = self.validate_routespec(routespec)
        parse_routespec(routespec)  # refuse before it reaches any file
        parsed = parse_target(target)
        if self.dynamic and needs_resolving(parsed):
            await self._resolve(parsed)  # nginx's balancer takes addresses; fails this call alone
        route = {"routespec": routespec, "target": target, "data": dict(data or {})}
        json.dumps(route)  # JSON-able, or refused now rather than at the next write
        self._change(routespec, route)
        await self._commit()

    async def delete_route(self, routespec: str) -> None:
        routespec = self.validate_routespec(routespec)
        if routespec not in self._load():
            return  # deleting a missing route succeeds
        self._change(routespec, None)
        await self._commit()

    async def get_all_routes(self) -> dict[str, dict[str, Any]]:
        return {k: {**v, "data": dict(v["data"])} for k, v in self._load().items()}

    async def get_route(self, routespec: str) -> dict[str, Any] | None:
        route = self._load().get(self.validate_routespec(routespec))
        return {**route, "data": dict(route["data"])} if route else None

    # -- batching: many changes, one reload ------------------------------------------------

    def _change(self, routespec: str, route: dict[str, Any] | None) -> None:
        self._changes.append((routespec, route))
        _replay(self._load(), [(routespec, route)])

    async def _commit(self) -> None:
        """Wait until a reload that includes every change made so far is served."""
        if self._batch is None:
            self._batch = asyncio.get_running_loop().create_future()
            asyncio.ensure_future(self._flush(self._batch))
        await asyncio.shield(self._batch)

    async def _flush(self, batch: asyncio.Future[None]) -> None:
        try:
            await asyncio.sleep(self.batch_window)
            async with self._apply_lock:
                if self._batch is batch:
                    self._batch = None  # changes from now on go into the next batch
                await self._apply()
        except asyncio.CancelledError:
            batch.cancel()
            raise
        except Exception as err:
            batch.set_exception(err)
        else:
            batch.set_result(None)

    async def _apply(self) -> None:
        """Write routes.json and the configuration with the changes so far, reload, wait."""
        self._load()
        changes, self._changes = self._changes, []
        routes = _replay(dict(self._committed), changes)
        generation = self._generation + 1
        try:
            if self.dynamic:
                await self._write_and_send(routes, generation, changes)
            else:
                await self._write_and_reload(routes, generation)
        except BaseException:
            # The batch failed as a whole: the hub sees the committed routes plus later changes.
            self._routes = _replay(dict(self._committed), self._changes)
            raise
        self._committed, self._generation = routes, generation

    # -- dynamic routes: the table in nginx's shared memory ---------------------------------

    async def _write_and_send(self, routes: dict[str, dict[str, Any]], generation: int,
                              changes: list[tuple[str, dict[str, Any] | None]]) -> None:
        """Write routes.json, then send the changes (or the whole table) to the running nginx."""
        state_file = self.dir / STATE_FILE
        try:
            previous: str | None = state_file.read_text()
        except FileNotFoundError:
            previous = None
        _write_atomic(state_file, json.dumps({"generation": generation, "routes": routes}))
        if self._running_pid() is None:
            return  # start() sends the whole table once nginx answers
        t0 = time.monotonic()
        try:
            if self._full_sync:
                await self._resolve_names(routes)
                lines = ["sync", *filter(None, (self._table_line(r) for r in routes.values()))]
            else:
                lines = [self._table_line(route) if route else f"del\t{_table_key(spec)}"
                         for spec, route in changes]
            await self._send([*filter(None, lines), f"generation\t{generation}"])
        except BaseException:
            # nginx may hold part of it: files as before, and the next change sends everything.
            if previous is None:
                state_file.unlink(missing_ok=True)
            else:
                _write_atomic(state_file, previous)
            self._full_sync = True
            raise
        self._full_sync = False
        self.log.debug("route table at generation %d (%d routes) in %.1f ms", generation,
                       len(routes), 1000 * (time.monotonic() - t0))

    def _table_line(self, route: dict[str, Any]) -> str | None:
        target = parse_target(route["target"])
        address = self._addresses.get(target.host) if needs_resolving(target) else target.host
        if address is None:
            self.log.error("No address for %s: route %s left out of nginx's table",
                           target.host, route["routespec"])
            return None
        return table_line(parse_routespec(route["routespec"]), target, address)

    async def _resolve(self, target: Target) -> None:
        """Resolve a target's DNS name now, as nginx did when it loaded a configuration."""
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                target.host, target.port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as err:
            raise RuntimeError(f"cannot route to {target.host!r}: host not found ({err})") from None
        # nginx used every address of a name; the balancer takes one: IPv4 first, as most nodes.
        infos.sort(key=lambda info: info[0] != socket.AF_INET)
        self._addresses[target.host] = str(infos[0][4][0])

    async def _resolve_names(self, routes: dict[str, dict[str, Any]]) -> None:
        """Addresses for the names among the targets not resolved yet (after a hub restart)."""
        targets = {t.host: t for t in (parse_target(r["target"]) for r in routes.values())
                   if needs_resolving(t) and t.host not in self._addresses}
        for target in targets.values():
            try:
                await self._resolve(target)
            except RuntimeError as err:
                self.log.error("%s", err)

    async def _send(self, lines: list[str]) -> None:
        status, body = await _status_request(self.status_address, "POST", ROUTES_PATH,
                                             ("\n".join(lines) + "\n").encode(), self.reload_timeout)
        if status != 200:
            raise NginxRefused(f"nginx refused the route change ({status}): "
                               f"{body.decode(errors='replace').strip()}")

    async def _configure(self, running: int | None) -> None:
        """Write (and test) the configuration, which holds no route; a `running` nginx whose
        file differs (other settings, or a hub upgraded) is reloaded onto the new one."""
        missing = _missing(self.lua_modules)
        if missing:
            raise RuntimeError(
                f"hpcgate-nginx's route table needs lua-nginx-module, and {', '.join(missing)} is "
                "missing: install Debian's libnginx-mod-http-lua (make setup does), or set "
                "c.NginxProxy.dynamic_routes = False (a reload per route change)")
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "temp").mkdir(mode=0o755, exist_ok=True)  # nginx makes (and chowns) the rest
        private = self.dir / "private"
        private.mkdir(mode=0o700, exist_ok=True)
        private.chmod(0o700)
        text = self._main_config(render_http({}, self._settings(0)))
        try:
            if self.conf_path.read_text() == text:
                return
        except FileNotFoundError:
            pass
        candidate = self.conf_path.with_suffix(".new")
        candidate.write_text(text)
        await self._test_config(candidate)
        os.replace(candidate, self.conf_path)
        if running is None:
            return
        self.log.info("Reloading nginx %d onto a new configuration", running)
        await self._write_table_file()  # should the table be new (another size): routes.json's
        idle = await _master_idle(running, self.reload_timeout)
        before = _workers(running)
        os.kill(running, signal.SIGHUP)
        await self._retire_old_workers(running, before, _size(self.dir / "error.log"), quit_old=idle)
        await self._wait_old_workers_closed(running, before)
        self._known_workers = _workers(running)
        self._full_sync = True  # a table from before (another configuration) may be empty

    async def _write_table_file(self) -> None:
        """routes.json as lines for the route table, which a new table loads in nginx's master."""
        await self._resolve_names(self._committed)
        lines = ["sync", *filter(None, map(self._table_line, self._committed.values())),
                 f"generation\t{self._generation}"]
        _write_atomic(self.dir / "private" / TABLE_FILE, "\n".join(lines) + "\n")

    async def _wait_answering(self) -> None:
        """Until the status listener answers: the route table can take changes."""
        deadline = time.monotonic() + self.reload_timeout
        while time.monotonic() < deadline:
            if self._running_pid() is None:
                raise RuntimeError(f"nginx exited; see {self.dir / 'error.log'}")
            if await _get_generation(self.status_address) is not None:
                return
            await asyncio.sleep(0.005)
        raise RuntimeError(f"nginx did not answer within {self.reload_timeout} s; "
                           f"see {self.dir / 'error.log'}")

    # -- reloads: the routes in the configuration ---------------------------------------------

    async def _write_and_reload(self, routes: dict[str, dict[str, Any]], generation: int) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        http = render_http(routes, self._settings(generation))
        if self.should_start:
            (self.dir / "temp").mkdir(mode=0o755, exist_ok=True)  # nginx makes (and chowns) the rest
            text = self._main_config(http)
            state_file = self.dir / STATE_FILE
            running = self._running_pid() is not None
            tested = self._test_key(routes, generation)
            t0 = time.monotonic()
            served: tuple[bytes, bytes] | None = None
            if not running or self._needs_test(tested):
                candidate = self.conf_path.with_suffix(".new")
                candidate.write_text(text)
                await self._test_config(candidate)
                os.replace(candidate, self.conf_path)
            else:
                # Routes to IP addresses only, same settings: nothing nginx -t could find that the
                # rendering did not refuse, and the master parses the file on SIGHUP anyway (-t cost
                # 22 ms of 85 at 1,000 routes). Should it refuse, the old files come back.
                served = (self.conf_path.read_bytes(), state_file.read_bytes())
                _write_atomic(self.conf_path, text)
            _write_atomic(state_file, json.dumps({"generation": generation, "routes": routes}))
            if not running:
                self._tested = tested
                return  # start() runs nginx on this configuration
            idle = await _master_idle(self._pid, self.reload_timeout)  # a SIGHUP would wait as long
            before = _workers(self._pid)
            log_size = _size(self.dir / "error.log")
            os.kill(self._pid, signal.SIGHUP)
            try:
                await self._retire_old_workers(self._pid, before, log_size, quit_old=idle)
            except NginxRefused:
                if served:
                    _write_atomic(self.conf_path, served[0].decode())
                    _write_atomic(state_file, served[1].decode())
                raise
            self._tested = tested
            await self._wait_generation(generation)
            await self._wait_old_workers_closed(self._pid, before)
            self._known_workers = _workers(self._pid)
            self.log.debug("nginx reloaded to generation %d (%d routes) in %.0f ms", generation,
                           len(routes), 1000 * (time.monotonic() - t0))
        else:
            if not self.include_file:
                raise ValueError("NginxProxy.include_file is needed with should_start = False")
            _write_atomic(self.dir / STATE_FILE, json.dumps({"generation": generation, "routes": routes}))
            _write_atomic(Path(self.include_file), http)
            master = _read_pid(Path(self.pid_file)) if self.pid_file else None
            idle = bool(master) and await _master_idle(master)
            before = _workers(master)
            proc = await asyncio.create_subprocess_exec(
                *self.reload_command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            out, _ = await proc.communicate()
            if proc.returncode:
                raise RuntimeError(f"{self.reload_command} failed ({proc.returncode}): "
                                   f"{out.decode(errors='replace').strip()}")
            if master:
                await self._retire_old_workers(master, before, quit_old=idle)
            await self._wait_generation(generation)
            if master:
                await self._wait_old_workers_closed(master, before)
            else:  # old workers accept for nginx's fixed 100 ms after the new ones start
                await asyncio.sleep(OLD_WORKERS_GRACE)

    def _test_key(self, routes: dict[str, dict[str, Any]],
                  generation: int) -> tuple[str, frozenset[str]]:
        """What nginx -t vouches for: the configuration without its routes, and the DNS names
        among the targets (nginx resolves them when it loads the file)."""
        settings = self._settings(generation)
        frame = self._main_config(render_http({}, dataclasses.replace(settings, generation=0)))
        targets = [parse_target(r["target"]) for r in routes.values()]
        return frame, frozenset(t.host for t in targets if needs_resolving(t))

    def _needs_test(self, key: tuple[str, frozenset[str]]) -> bool:
        return self._tested is None or key[0] != self._tested[0] or not key[1] <= self._tested[1]

    def _main_config(self, http: str) -> str:
        return render_main(http, str(self.dir), str(self.nginx_pid_file), str(self.dir / "error.log"),
                           self.worker_processes, self.access_log,
                           modules=tuple(self.lua_modules) if self.dynamic else ())

    async def _test_config(self, path: Path) -> None:
        proc = await asyncio.create_subprocess_exec(
            self.nginx_path, "-t", "-q", "-c", str(path), "-p", f"{self.dir}/",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        if proc.returncode:
            raise NginxRefused(f"nginx refused the new configuration: {out.decode(errors='replace').strip()}")

    async def _wait_generation(self, generation: int) -> None:
        """Until nginx's status listener answers with `generation` (new workers are serving)."""
        deadline = time.monotonic() + self.reload_timeout
        seen: Any = None
        while time.monotonic() < deadline:
            if self.should_start and self._running_pid() is None:
                raise RuntimeError(f"nginx exited; see {self.dir / 'error.log'}")
            seen = await _get_generation(self.status_address)
            if seen == generation:
                return
            await asyncio.sleep(0.005)
        raise RuntimeError(f"nginx did not serve generation {generation} within {self.reload_timeout} s "
                           f"(it answers {seen!r}); see {self.dir / 'error.log'}")

    async def _retire_old_workers(self, master: int, before: dict[int, bytes],
                                  log_size: int | None = None, quit_old: bool = True) -> None:
        """Once the master has forked the new configuration's workers, SIGQUIT the old ones.

        After forking them nginx sleeps a fixed 100 ms, all its signals blocked, before it sends
        the old workers the same SIGQUIT; meanwhile they take most new connections (the status
        check's too), so that sleep was most of a route change (130 of 175 ms with 1,000 routes).
        A worker's SIGQUIT does what the master's would: it closes its listeners and finishes its
        open connections. The listening sockets stay open in the master and the new workers, so no
        connection is refused; one that arrives before a new worker polls waits in the backlog. The
        master's own SIGQUIT follows (already exiting: harmless), and as its SIGCHLD stays blocked
        until then, the master marks the old workers exiting before it reaps them: none is
        respawned. A worker we may not signal (a site's nginx under another user) is left to
        the master."""
        deadline = time.monotonic() + self.reload_timeout
        while time.monotonic() < deadline:
            now = _workers(master)
            if any(pid not in before for pid in now):
                break
            if not _cmdline(master):
                raise RuntimeError(f"nginx exited during a reload; see {self.dir / 'error.log'}")
            if log_size is not None:  # a refused configuration: the master keeps the old one
                refused = _emerg_since(self.dir / "error.log", log_size)
                if refused:
                    raise NginxRefused(f"nginx refused the new configuration: {refused}")
            await asyncio.sleep(0.002)
        else:
            return  # the master never forked: _wait_generation reports it
        if not quit_old:
            return
        for pid, title in before.items():
            if _old_worker(title) and _cmdline(pid) == title:  # still that worker, still accepting
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGQUIT)

    async def _wait_old_workers_closed(self, master: int, before: dict[int, bytes]) -> None:
        """Until the workers of the previous configuration stopped accepting connections.

        nginx starts the new workers, sleeps 100 ms, then tells the old ones to finish their open
        connections and close their listeners: until then a new connection may reach old routes."""
        deadline = time.monotonic() + self.reload_timeout
        while time.monotonic() < deadline:
            now = _workers(master)
            if not any(pid in now and _old_worker(now[pid]) for pid, title in before.items()
                       if _old_worker(title)):
                return
            await asyncio.sleep(0.005)
        raise RuntimeError("nginx's old workers did not stop accepting after a reload")

    # -- the process -------------------------------------------------------------------------

    def _running_pid(self) -> int | None:
        if self._proc is not None:
            return self._proc.pid if self._proc.poll() is None else None
        if self._pid and _is_our_nginx(self._pid, self.conf_path):
            return self._pid
        return None

    async def start(self) -> None:
        """Run nginx (or adopt the one a crashed hub left running on this state directory)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o711)  # workers (nobody) reach their temp directories, list nothing
        self._load()
        previous = _read_pid(self.nginx_pid_file)
        if previous and _is_our_nginx(previous, self.conf_path):
            self.log.info("Adopting nginx %d, still running on %s", previous, self.conf_path)
            self._pid = previous
            async with self._apply_lock:
                if self.dynamic:
                    await self._configure(previous)
                    self._full_sync = True  # whatever it holds, routes.json is the truth
                await self._apply()
        else:
            async with self._apply_lock:
                if self.dynamic:
                    await self._configure(None)
                    self._full_sync = True
                else:
                    await self._apply()  # writes and tests the configuration; nothing to reload
            if self.status_address.startswith("unix:"):  # left by an nginx that was SIGKILLed
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.status_address[5:])
            if self.dynamic:  # nginx serves these from its first request; start() syncs after
                await self._write_table_file()
            self.log.info("Starting nginx on %s", ", ".join(self._listen_addresses()))
            self._proc = subprocess.Popen(  # noqa: ASYNC220 - a long-lived child, never awaited
                [self.nginx_path, "-c", str(self.conf_path), "-p", f"{self.dir}/"],
                stdin=subprocess.DEVNULL, start_new_session=True)
            self._pid = self._proc.pid
            try:
                if self.dynamic:
                    await self._wait_answering()
                    async with self._apply_lock:
                        await self._apply()  # the whole table, from routes.json
                else:
                    await self._wait_generation(self._generation)
            except Exception:
                await self._end_nginx()  # this attempt only: the periodic check tries again
                raise
            self._known_workers = _workers(self._pid)
        if self._checker is None and self.check_running_interval:
            self._checker = PeriodicCallback(self.check_running, 1e3 * self.check_running_interval)
            self._checker.start()

    async def stop(self) -> None:
        """Stop nginx (fast shutdown: open connections close) and its periodic check."""
        if self._checker is not None:
            self._checker.stop()
            self._checker = None
        await self._end_nginx()

    async def _end_nginx(self) -> None:
        """Stop the nginx this object runs or adopted (SIGTERM, SIGKILL after 5 s)."""
        pid = self._running_pid()
        if pid is None:
            return
        workers = list(_workers(pid))
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while self._running_pid() is not None and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        if self._running_pid() is not None:
            for p in [pid, *workers]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGKILL)
        if self._proc is not None:
            self._proc.wait()
        self._proc, self._pid = None, None

    async def check_running(self) -> None:
        """Start nginx again if it died; it comes back with every route (they are on disk). A
        start that fails is logged and tried again at the next check, however often it fails."""
        pid = self._running_pid()
        if pid is not None:
            self._known_workers = _workers(pid)
            return
        # Not in the middle of a reload, which would still signal the dead master.
        async with self._apply_lock:
            if self._running_pid() is not None:
                return
            self.log.error("nginx is not running any more; starting it again")
            dead = self._pid or _read_pid(self.nginx_pid_file)
            if self._proc is not None:
                self._proc.wait()
            # Workers outlive a killed master and keep the listening sockets (a new master could
            # not bind): end them first, those last seen and any other the master left.
            orphans = _orphans(dead, self._known_workers)
            unseen = orphans - set(self._known_workers)
            if orphans:
                self.log.info("Ending %d worker(s) the dead nginx %s left%s", len(orphans), dead,
                              f" ({len(unseen)} the hub had not seen)" if unseen else "")
            for worker in orphans:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(worker, signal.SIGKILL)
            self._known_workers = {}
            self._proc, self._pid = None, None
        try:
            await self.start()
        except Exception as err:  # noqa: BLE001 - the next check tries again; say why meanwhile
            self.log.error("nginx did not start again (%s); trying again in %d s", err,
                           self.check_running_interval)


class NginxRefused(RuntimeError):
    """nginx refused a configuration (nginx -t, or the master on SIGHUP)."""


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _emerg_since(path: Path, offset: int) -> str:
    """The first `[emerg]` line nginx appended to its error log after `offset`, or ""."""
    if _size(path) <= offset:
        return ""
    with open(path, "rb") as f:
        f.seek(offset)
        for line in f.read().decode(errors="replace").splitlines():
            if "[emerg]" in line:
                return line.split("[emerg]", 1)[1].strip()
    return ""


def _replay(routes: dict[str, dict[str, Any]],
            changes: list[tuple[str, dict[str, Any] | None]]) -> dict[str, dict[str, Any]]:
    """`routes` with `changes` applied in order (None deletes); returned for convenience."""
    for routespec, route in changes:
        if route is None:
            routes.pop(routespec, None)
        else:
            routes[routespec] = route
    return routes


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _is_our_nginx(pid: int, conf: Path) -> bool:
    """An nginx master process (not a zombie) running on our configuration file."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[1].split()[0] == "Z":
        return False
    title = _cmdline(pid)
    return title.startswith(b"nginx: master process") and str(conf).encode() in title


def _orphans(master: int | None, known: dict[int, bytes]) -> set[int]:
    """The workers a dead nginx master left: those seen last (`known`, if still the same
    processes) and every other nginx worker of its process group that no master owns any more
    (forked since the last look, by a reload or to replace a worker). The hub starts nginx in a
    session of its own, so the master's pid is its workers' process group; a live nginx's workers
    are its children, and never counted."""
    found = {pid for pid, title in known.items() if _cmdline(pid) == title}
    if not master:
        return found
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        state, ppid, pgrp = fields[0], int(fields[1]), int(fields[2])
        if (pgrp == master and ppid != master and state != "Z"
                and _cmdline(int(entry)).startswith(b"nginx: worker process")):
            found.add(int(entry))
    return found


def _workers(master: int | None) -> dict[int, bytes]:
    """The master's children and their titles ("nginx: worker process[ is shutting down]")."""
    if not master:
        return {}
    try:
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    except OSError:
        return {}
    return {int(c): _cmdline(int(c)) for c in children}


def _old_worker(title: bytes) -> bool:
    """A worker that accepts connections: titled so, or just forked (still the master's title)."""
    return (title.startswith((b"nginx: worker process", b"nginx: master process"))
            and b"shutting down" not in title)


async def _master_idle(master: int, timeout: float = 0.5) -> bool:
    """Until the nginx master waits for signals (not parsing, forking, or in the 100 ms sleep of
    a reload): then every child it has is a worker of the configuration it serves, and every child
    that appears after our SIGHUP is one of the new configuration's. False when that cannot be
    told: a master of another user (a site's nginx, the hub not root; its workers are not ours to
    signal either), or one still busy after `timeout`; the old workers are then left to it."""
    try:
        if os.geteuid() != 0 and os.stat(f"/proc/{master}").st_uid != os.geteuid():
            return False  # its wchan reads "0" to us whatever it does (a root-run site nginx)
    except OSError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        wchan = _wchan(master)
        if wchan is None:
            return False
        if "sigsuspend" in wchan:
            return True
        await asyncio.sleep(0.002)
    return False


def _wchan(pid: int) -> str | None:
    """Where the process sleeps in the kernel ("0" when running or not ours to see)."""
    try:
        return Path(f"/proc/{pid}/wchan").read_text()  # a /proc file: never blocks
    except OSError:
        return None


def _missing(paths: list[str]) -> list[str]:
    return [p for p in paths if not os.path.exists(p)]


def _table_key(routespec: str) -> str:
    spec = parse_routespec(routespec)
    return spec.host + spec.path


async def _status_request(address: str, method: str, path: str, body: bytes = b"",
                          timeout: float = 2) -> tuple[int, bytes]:
    """One HTTP/1.0 request to nginx's status listener: (status, body). Raises OSError when it
    cannot connect, asyncio.TimeoutError when it does not answer in time."""
    if address.startswith("unix:"):
        reader, writer = await asyncio.open_unix_connection(address[5:])
    else:
        host, _, port = address.rpartition(":")
        reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
    try:
        writer.write(f"{method} {path} HTTP/1.0\r\nHost: localhost\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        response = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    head, _, content = response.partition(b"\r\n\r\n")
    try:
        return int(head.split(None, 2)[1]), content
    except (IndexError, ValueError):
        return 0, response


async def _get_generation(address: str) -> int | None:
    """GET the generation marker from the status listener; None when it does not answer."""
    try:
        status, body = await _status_request(address, "GET", GENERATION_PATH)
    except (OSError, asyncio.TimeoutError):
        return None
    if status != 200:
        return None
    try:
        return int(body.strip())
    except ValueError:
        return None
