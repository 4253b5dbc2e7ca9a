"""hpcgate-nginx against a real nginx: the proxy contract, websockets, client addresses, restarts,
and a long download through graceful reloads. Upstreams are small aiohttp servers on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from gateway.hub.proxy.nginx import NginxProxy, _cmdline, _orphans, _workers
from gateway.hub.proxy.render import RouteError
from gateway.lab.procs import free_port

pytestmark = pytest.mark.asyncio(loop_scope="module")

HUGE = 2 * 2**30  # served with sendfile from a sparse file: the proxy is what is measured
CHUNK = 2**20
HUGE_FILE = web.AppKey("huge", str)


def _need_nginx() -> str:
    path = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if path is None:
        # Never a skip: a missing nginx is a missing install step.
        pytest.fail("nginx is not installed (make setup installs Debian's nginx-light)",
                    pytrace=False)
    return path


async def _handler(request: web.Request) -> web.StreamResponse:
    port = request.transport.get_extra_info("sockname")[1]
    if request.path.endswith("/ws"):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            await ws.send_str(f"{port}:{msg.data}")
        return ws
    if request.path.endswith("/huge"):
        return web.FileResponse(request.app[HUGE_FILE])
    return web.json_response({"port": port, "path": request.raw_path, "method": request.method,
                              "cookie": request.headers.get("Cookie"),
                              "x_real_ip": request.headers.get("X-Real-Ip"),
                              "x_forwarded_for": request.headers.get("X-Forwarded-For"),
                              "x_forwarded_proto": request.headers.get("X-Forwarded-Proto")})


class Env:
    def __init__(self, nginx: str, upstreams: list[int]):
        self.nginx, self.upstreams = nginx, upstreams
        self.dir = Path(tempfile.mkdtemp(prefix="hpcgate-ngx-", dir="/tmp"))  # short: unix socket
        self.port = free_port()
        self.proxies: list[NginxProxy] = []

    def proxy(self, state: str = "state", **kw: Any) -> NginxProxy:
        kw.setdefault("public_url", f"http://127.0.0.1:{self.port}/")
        kw.setdefault("check_running_interval", 0)  # the tests call check_running() themselves
        p = NginxProxy(state_dir=str(self.dir / state), nginx_path=self.nginx, should_start=True,
                       **kw)
        self.proxies.append(p)
        return p

    def target(self, i: int, path: str = "") -> str:
        return f"http://127.0.0.1:{self.upstreams[i]}{path}"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env() -> AsyncIterator[Env]:
    nginx = _need_nginx()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _handler)
    huge = tempfile.NamedTemporaryFile(prefix="hpcgate-ngx-huge-", dir="/var/tmp")  # noqa: SIM115
    huge.truncate(HUGE)  # sparse: no disk, no page cache to fill
    app[HUGE_FILE] = huge.name
    runner = web.AppRunner(app)
    await runner.setup()
    ports = [free_port() for _ in range(3)]
    for port in ports:
        await web.TCPSite(runner, "127.0.0.1", port).start()
    e = Env(nginx, ports)
    try:
        yield e
    finally:
        for p in e.proxies:  # whatever happened: no nginx left behind
            try:
                await p.stop()
            except Exception as err:
                print(f"stopping nginx: {err}")
        for pid_file in e.dir.glob("*/nginx.pid"):
            try:
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            except (OSError, ValueError):
                pass
        await runner.cleanup()
        huge.close()
        shutil.rmtree(e.dir, ignore_errors=True)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def proxy(env: Env) -> AsyncIterator[NginxProxy]:
    p = env.proxy()
    await p.start()
    yield p


async def get(env: Env, path: str, headers: dict[str, str] | None = None,
              port: int | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port or env.port}{path}",
                                                   headers=headers or {}) as r:
        body = await r.text()
        return r.status, json.loads(body) if r.content_type == "application/json" else body


async def raw_get(port: int, target: str) -> tuple[int, bytes]:
    """GET `target` exactly as written (aiohttp and yarl resolve dot segments before sending)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: jupyterhub-user-bob=secret\r\n"
                     f"Connection: close\r\n\r\n".encode())
        response = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_add_get_all_delete_and_delete_missing(env: Env, proxy: NginxProxy) -> None:
    await proxy.add_route("/user/alice/", env.target(0), {"user": "alice", "server_name": ""})
    assert await proxy.get_route("/user/alice/") == {
        "routespec": "/user/alice/", "target": env.target(0), "data": {"user": "alice", "server_name": ""}}
    assert set(await proxy.get_all_routes()) == {"/user/alice/"}
    status, body = await get(env, "/user/alice/api/x?y=1")
    assert status == 200 and body["port"] == env.upstreams[0] and body["path"] == "/user/alice/api/x?y=1"
    assert (await get(env, "/user/alice"))[1]["path"] == "/user/alice"  # as CHP: the prefix's own URL
    await proxy.delete_route("/user/alice/")
    assert await proxy.get_route("/user/alice/") is None
    assert await proxy.get_all_routes() == {}
    assert (await get(env, "/user/alice/api"))[0] == 404
    await proxy.delete_route("/user/alice/")  # missing: fine
    await proxy.delete_route("/user/nobody/")


async def test_most_specific_prefix_wins(env: Env, proxy: NginxProxy) -> None:
    await asyncio.gather(proxy.add_route("/", env.target(0), {"hub": True}),
                         proxy.add_route("/user/alice/", env.target(1), {}),
                         proxy.add_route("/user/alice-2/", env.target(2, "/base"), {}))
    for path, port, seen in [("/user/alice/lab", 1, "/user/alice/lab"),
                             ("/user/alice-2/lab", 2, "/base/user/alice-2/lab"),
                             ("/user/alice-3/lab", 0, "/user/alice-3/lab"),
                             ("/hub/login", 0, "/hub/login"),
                             ("/user/alice//x", 1, "/user/alice//x")]:
        status, body = await get(env, path)
        assert status == 200 and (body["port"], body["path"]) == (env.upstreams[port], seen), path
    for spec in ("/user/alice/", "/user/alice-2/"):
        await proxy.delete_route(spec)
    assert (await get(env, "/user/alice/lab"))[1]["port"] == env.upstreams[0]  # now the default


async def test_dot_segments_never_cross_from_one_route_to_another(env: Env, proxy: NginxProxy) -> None:
    """nginx resolves "..", "%2e%2e" and "%2f" before it picks a location, and passes the URI as
    sent: bob's link into alice's server (with bob's cookie for /user/bob/) or a path escaping
    /user/carol/ towards the hub must be refused at the edge, never routed."""
    await asyncio.gather(proxy.add_route("/", env.target(0), {"hub": True}),
                         proxy.add_route("/user/alice/", env.target(1), {}),
                         proxy.add_route("/user/bob/", env.target(2), {}))
    try:
        for target in ["/user/bob/../alice/api", "/user/bob/%2e%2e/alice/api", "/user/bob/%2E%2e/alice/api",
                       "/user/bob/.%2e/alice/api", "/user/bob/%2e./alice/api", "/user/bob/..%2falice/api",
                       "/user/bob/%2e%2e%2Falice/api", "/user/bob%2f..%2falice/api",
                       "/user/bob%2F%2e%2e%2Falice/api", "/user/bob/x/../../alice/api",
                       "/user/bob/./../alice/api", "/user/bob/%2e/x", "/user/bob/..", "/user/bob/%2e%2e",
                       "/user/bob/..?x=1", "/user/alice/api/contents/%2e%2e/%2e%2e/%2e%2e/var/tmp/x",
                       "/user/alice/api/contents/../../../hub/api/users"]:
            status, body = await raw_get(env.port, target)
            assert status == 400, (target, status, body)
            assert b"secret" not in body and b"port" not in body, target
        # Names with dots are not dot segments, nor are dots in the query or double-encoded ones.
        for target, upstream in [("/user/bob/.../x", 2), ("/user/bob/.x/y", 2), ("/user/bob/a..b/x", 2),
                                 ("/user/bob/x..", 2), ("/user/bob/..x", 2),
                                 ("/user/bob/%252e%252e/alice/x", 2), ("/user/bob/x?next=/../alice/", 2),
                                 ("/hub/login?next=%2Fuser%2F..%2Fbob", 0)]:
            status, body = await raw_get(env.port, target)
            assert status == 200, (target, status, body)
            seen = json.loads(body)
            assert (seen["port"], seen["path"]) == (env.upstreams[upstream], target), target
    finally:
        await asyncio.gather(*[proxy.delete_route(r) for r in ("/", "/user/alice/", "/user/bob/")])


async def test_an_unreachable_server_answers_503_with_the_hubs_page(env: Env) -> None:
    """As CHP with --error-target: the hub's /hub/error/503 page (fetched with a plain GET, no
    cookies) under the status 503, never as a 200 a client could take for its server's answer."""
    port = free_port()
    p = env.proxy("errors", public_url=f"http://127.0.0.1:{port}/",
                  hub=SimpleNamespace(url=env.target(0, "/hub/")))
    await p.start()
    try:
        await p.add_route("/", env.target(0), {"hub": True})
        await p.add_route("/user/ida/", f"http://127.0.0.1:{free_port()}", {})  # nothing listens
        async with aiohttp.ClientSession() as s:
            for method in ("GET", "POST", "DELETE"):
                async with s.request(method, f"http://127.0.0.1:{port}/user/ida/api/kernels",
                                     data=b"{}" if method == "POST" else None,
                                     headers={"Cookie": "jupyterhub-user-ida=secret"}) as r:
                    assert r.status == 503, method
                    body = await r.json()
                    assert body["port"] == env.upstreams[0], method  # the hub's page
                    assert (body["path"], body["method"], body["cookie"]) == ("/hub/error/503", "GET", None)
        await p.add_route("/user/ida/", env.target(1), {})  # back: its own answer, 200
        status, body = await get(env, "/user/ida/api/kernels", port=port)
        assert status == 200 and body["port"] == env.upstreams[1]
    finally:
        await p.stop()


async def test_the_hub_itself_down_gets_a_sentence_not_a_bare_502(env: Env) -> None:
    """While the hub restarts (nothing on its port), its pages and a server that does not answer
    get a 503 with a sentence and Retry-After, not nginx's own 502 page."""
    port, hub_port = free_port(), free_port()
    p = env.proxy("hubdown", public_url=f"http://127.0.0.1:{port}/",
                  hub=SimpleNamespace(url=f"http://127.0.0.1:{hub_port}/hub/"))
    await p.start()
    try:
        await p.add_route("/", f"http://127.0.0.1:{hub_port}", {"hub": True})
        await p.add_route("/user/ida/", f"http://127.0.0.1:{free_port()}", {})
        async with aiohttp.ClientSession() as s:
            for path in ("/hub/home", "/hub/api/users/ida", "/user/ida/lab"):
                async with s.get(f"http://127.0.0.1:{port}{path}") as r:
                    text = await r.text()
                    assert r.status == 503, (path, r.status, text[:200])
                    assert "The portal is not answering right now" in text, text[:300]
                    assert r.headers["Retry-After"] == "10" and "Set-Cookie" not in r.headers
    finally:
        await p.stop()


async def test_host_routes(env: Env) -> None:
    port = free_port()
    p = env.proxy("hosts", public_url=f"http://127.0.0.1:{port}/", host_routing=True)
    await p.start()
    try:
        await p.add_route("/", env.target(0), {"hub": True})
        await p.add_route("alice.hub.test/", env.target(1), {"user": "alice"})
        await p.add_route("alice.hub.test/special/", env.target(2), {})
        with pytest.raises(ValueError):
            await p.add_route("/user/bob/", env.target(1), {})  # no host while host routing
        cases = [("alice.hub.test", "/lab", 1), ("alice.hub.test", "/special/x", 2),
                 ("ALICE.hub.test:80", "/lab", 1), ("bob.hub.test", "/lab", 0), ("", "/lab", 0)]
        for host, path, upstream in cases:
            status, body = await get(env, path, {"Host": host} if host else None, port=port)
            assert status == 200 and body["port"] == env.upstreams[upstream], (host, path, body)
    finally:
        await p.stop()


async def test_an_ipv6_target(env: Env, proxy: NginxProxy) -> None:
    """The balancer takes an IPv6 peer in brackets, as nginx's upstream parser reads it."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "::1", port).start()
    try:
        await proxy.add_route("/user/six/", f"http://[::1]:{port}", {})
        status, body = await get(env, "/user/six/api")
        assert status == 200 and body["port"] == port and body["path"] == "/user/six/api"
        await proxy.delete_route("/user/six/")
    finally:
        await runner.cleanup()


async def test_a_path_of_many_slashes_costs_no_more_than_a_short_one(env: Env, proxy: NginxProxy) -> None:
    """The route lookup tries no prefix longer than the longest route: a path of 30,000 slashes
    took 2 s of a worker's CPU per request when every prefix was looked up."""
    await proxy.add_route("/user/deep/", env.target(1), {})
    try:
        status, body = await get(env, "/user/deep/a/b/c/d/e/f/g/h?x=/1/2/")
        assert status == 200 and body["port"] == env.upstreams[1]
        t0 = time.monotonic()
        for _ in range(20):
            status, _ = await raw_get(env.port, "/x" + "/" * 30000)
            assert status in (400, 404)  # no route, or the hub's default refuses the length
        assert time.monotonic() - t0 < 5  # 43 s before
    finally:
        await proxy.delete_route("/user/deep/")


async def test_client_supplied_addresses_are_replaced(env: Env, proxy: NginxProxy) -> None:
    await proxy.add_route("/user/carol/", env.target(0), {})
    status, body = await get(env, "/user/carol/api",
                             {"X-Real-Ip": "6.6.6.6", "X-Forwarded-For": "6.6.6.6, 7.7.7.7"})
    assert status == 200
    assert (body["x_real_ip"], body["x_forwarded_for"]) == ("127.0.0.1", "127.0.0.1")
    await proxy.delete_route("/user/carol/")


async def test_refuses_what_could_break_out_of_a_directive(env: Env, proxy: NginxProxy) -> None:
    before = await proxy.get_all_routes()
    bad = [("/user/a\n}\nserver {/", env.target(0)), ("/user/x/", "http://127.0.0.1:1; evil;"),
           ("/user/x/", 'http://127.0.0.1:1/"}'), ("/user/x/", "file:///etc/passwd"),
           ("/user/x/", "http://$host:80")]
    for spec, target in bad:
        with pytest.raises(RouteError):
            await proxy.add_route(spec, target, {})
    assert await proxy.get_all_routes() == before
    # Quotes, braces, semicolons and spaces in a (URL-escaped) name are written as a safe string.
    spec = "/user/o%27brien%22%7B%3B%20x/"
    await proxy.add_route(spec, env.target(1), {})
    status, body = await get(env, spec + "api")
    assert status == 200 and body["port"] == env.upstreams[1]
    await proxy.delete_route(spec)


async def test_a_change_nginx_refuses_fails_alone_and_changes_nothing(env: Env, proxy: NginxProxy) -> None:
    before = await proxy.get_all_routes()
    with pytest.raises(RuntimeError, match="host not found"):
        await proxy.add_route("/user/ivy/", "http://no-such-host.invalid:80", {})
    assert await proxy.get_all_routes() == before
    await proxy.add_route("/user/ivy/", env.target(1), {})  # the next change goes through
    assert (await get(env, "/user/ivy/x"))[1]["port"] == env.upstreams[1]
    await proxy.delete_route("/user/ivy/")


async def test_a_configuration_the_master_refuses_on_reload_is_rolled_back(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without dynamic routes, route changes to IP targets skip nginx -t (the master parses the
    file on SIGHUP anyway): should the master refuse it, the change fails at once, and files and
    routes are as before."""
    from gateway.hub.proxy import nginx as module

    port = free_port()
    proxy = env.proxy("reloads", public_url=f"http://127.0.0.1:{port}/", dynamic_routes=False)
    await proxy.start()
    try:
        await proxy.add_route("/user/kim/", env.target(0), {})  # nginx -t ran for these settings
        assert "/user/kim/" in proxy.conf_path.read_text()  # routes in the configuration
        conf, state = proxy.conf_path.read_text(), (proxy.dir / "routes.json").read_text()
        real = module.render_http

        def broken(routes: dict, settings: Any) -> str:
            text = real(routes, settings)
            return text + "no_such_directive on;\n" if "/user/lee/" in routes else text

        monkeypatch.setattr(module, "render_http", broken)
        t0 = time.monotonic()
        with pytest.raises(module.NginxRefused, match="no_such_directive"):
            await proxy.add_route("/user/lee/", env.target(1), {})
        assert time.monotonic() - t0 < 5  # seen in the error log, not a reload timeout
        assert proxy.conf_path.read_text() == conf and (proxy.dir / "routes.json").read_text() == state
        assert await proxy.get_route("/user/lee/") is None
        monkeypatch.setattr(module, "render_http", real)
        await proxy.add_route("/user/lee/", env.target(1), {})  # the same nginx, the next change works
        assert (await get(env, "/user/lee/x", port=port))[1]["port"] == env.upstreams[1]
        assert (await get(env, "/user/kim/x", port=port))[1]["port"] == env.upstreams[0]
    finally:
        await proxy.stop()


async def test_a_change_the_route_table_refuses_changes_nothing(env: Env, proxy: NginxProxy) -> None:
    """nginx's route table refuses a key longer than its limit (64 KiB): the change fails, with
    routes.json as before, and the next change (the whole table again) goes through."""
    await proxy.add_route("/user/kim/", env.target(0), {})
    state = (proxy.dir / "routes.json").read_text()
    before = await proxy.get_all_routes()
    with pytest.raises(RuntimeError, match=r"refused the route change \(507\): cannot store the "
                                           "route: key too long"):
        await proxy.add_route("/user/" + "k" * 70000 + "/", env.target(1), {})
    assert (proxy.dir / "routes.json").read_text() == state
    assert await proxy.get_all_routes() == before
    await proxy.add_route("/user/lee/", env.target(1), {})
    assert (await get(env, "/user/lee/x"))[1]["port"] == env.upstreams[1]
    assert (await get(env, "/user/kim/x"))[1]["port"] == env.upstreams[0]
    for spec in ("/user/kim/", "/user/lee/"):
        await proxy.delete_route(spec)


async def test_route_changes_touch_no_worker_with_1000_routes(env: Env, proxy: NginxProxy) -> None:
    """Dynamic routes: the configuration holds no route, a change neither reloads nor forks (the
    same workers serve before and after), and each is served as soon as add_route returns."""
    from gateway.hub.proxy.nginx import _workers

    for i in range(0, 1000, 250):
        await asyncio.gather(*[proxy.add_route(f"/user/filler{j}/", f"http://127.0.0.1:{20000 + j}", {})
                               for j in range(i, i + 250)])
    assert "filler" not in proxy.conf_path.read_text()
    workers = _workers(proxy._pid)
    timings = []
    for i in range(20):
        t0 = time.monotonic()
        await proxy.add_route(f"/user/quick{i}/", env.target(i % 3), {})
        timings.append(time.monotonic() - t0)
        status, body = await get(env, f"/user/quick{i}/x")
        assert status == 200 and body["port"] == env.upstreams[i % 3]
        t0 = time.monotonic()
        await proxy.delete_route(f"/user/quick{i}/")
        timings.append(time.monotonic() - t0)
        assert (await get(env, f"/user/quick{i}/x"))[0] == 404
    assert _workers(proxy._pid) == workers
    await asyncio.gather(*[proxy.delete_route(f"/user/filler{j}/") for j in range(1000)])
    timings.sort()
    print(f"route changes with 1,000 routes: p50 {1000 * timings[20]:.1f} ms, "
          f"max {1000 * timings[-1]:.1f} ms")
    assert timings[-1] < 1  # a reload took 0.1-0.2 s here, and more under load


async def test_a_fresh_nginx_serves_the_routes_at_once_and_a_reload_keeps_the_table(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """nginx started (again) loads the table the hub wrote from routes.json in its master, so it
    serves every route before the hub sends anything; a reload (SIGHUP) keeps the table in shared
    memory as the hub changed it since, rather than that file."""
    from gateway.hub.proxy.nginx import _workers

    port = free_port()
    first = env.proxy("fresh", public_url=f"http://127.0.0.1:{port}/")
    await first.start()
    await first.add_route("/user/wes/", env.target(2), {})
    await first.stop()
    again = env.proxy("fresh", public_url=f"http://127.0.0.1:{port}/")
    sent: list[list[str]] = []

    async def withheld(lines: list[str]) -> None:
        sent.append(lines)

    monkeypatch.setattr(again, "_send", withheld)
    await again.start()
    try:
        assert sent and "/user/wes/" in sent[0][1]  # what the hub would have sent
        status, body = await get(env, "/user/wes/x", port=port)
        assert status == 200 and body["port"] == env.upstreams[2], (status, body)
        monkeypatch.undo()
        await again.delete_route("/user/wes/")
        await again.add_route("/user/xan/", env.target(1), {})
        before = _workers(again._pid)
        os.kill(again._pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while set(_workers(again._pid)) & set(before):
            assert time.monotonic() < deadline, "the old workers never left"
            await asyncio.sleep(0.05)
        assert (await get(env, "/user/wes/x", port=port))[0] == 404
        assert (await get(env, "/user/xan/x", port=port))[1]["port"] == env.upstreams[1]
    finally:
        await again.stop()


async def test_without_the_lua_module_the_hub_says_what_to_install(env: Env) -> None:
    p = env.proxy("no-lua", public_url=f"http://127.0.0.1:{free_port()}/",
                  lua_modules=["/usr/lib/nginx/modules/ndk_http_module.so", "/nonexistent/lua.so"])
    with pytest.raises(RuntimeError, match="/nonexistent/lua.so is missing: install Debian's "
                                           "libnginx-mod-http-lua"):
        await p.start()
    assert p._running_pid() is None


async def test_a_hub_upgraded_to_dynamic_routes_adopts_its_nginx(env: Env) -> None:
    """A hub restarted with dynamic routes on an nginx that serves routes from its configuration
    reloads it once onto the route table: the same master, the routes still served."""
    port = free_port()
    old = env.proxy("upgrade", public_url=f"http://127.0.0.1:{port}/", dynamic_routes=False)
    await old.start()
    new = None
    try:
        await old.add_route("/user/uma/", env.target(2), {})
        new = env.proxy("upgrade", public_url=f"http://127.0.0.1:{port}/")
        await new.start()
        assert new._pid == old._pid and "/user/uma/" not in new.conf_path.read_text()
        assert (await get(env, "/user/uma/x", port=port))[1]["port"] == env.upstreams[2]
        await new.add_route("/user/vic/", env.target(1), {})
        assert (await get(env, "/user/vic/x", port=port))[1]["port"] == env.upstreams[1]
    finally:
        await (new or old).stop()


async def test_changes_at_once_share_one_reload(env: Env, proxy: NginxProxy) -> None:
    first = proxy._generation
    await asyncio.gather(*[proxy.add_route(f"/user/u{i}/", env.target(i % 3), {}) for i in range(10)])
    assert proxy._generation - first == 1
    await asyncio.gather(*[proxy.delete_route(f"/user/u{i}/") for i in range(10)])
    assert proxy._generation - first == 2


async def test_routes_survive_a_new_proxy_object_and_it_adopts_nginx(env: Env, proxy: NginxProxy) -> None:
    await proxy.add_route("/user/dave/", env.target(2), {"user": "dave"})
    routes = await proxy.get_all_routes()
    pid = proxy._pid
    # A hub restarted after a crash: a new object on the same state directory.
    again = env.proxy()
    assert await again.get_all_routes() == routes
    await again.start()
    assert again._pid == pid  # the same nginx: open connections survive
    await again.add_route("/user/erin/", env.target(0), {})
    assert (await get(env, "/user/dave/x"))[1]["port"] == env.upstreams[2]
    assert (await get(env, "/user/erin/x"))[1]["port"] == env.upstreams[0]
    for spec in ("/user/dave/", "/user/erin/"):
        await again.delete_route(spec)
    proxy._routes = None  # the old object re-reads the state the new one wrote
    assert await proxy.get_all_routes() == await again.get_all_routes()


@pytest.mark.parametrize("dynamic", [True, False], ids=["route-table", "reloads"])
async def test_download_and_websocket_survive_100_route_changes(env: Env, proxy: NginxProxy,
                                                                dynamic: bool) -> None:
    """A 2 GiB download (sendfile from a sparse file upstream) and a websocket stay open through
    100 route changes, in the route table or each a graceful reload; requests right after each
    change see it."""
    port = env.port
    if not dynamic:
        port = free_port()
        proxy = env.proxy("reload-download", public_url=f"http://127.0.0.1:{port}/",
                          dynamic_routes=False)
        await proxy.start()
    try:
        await _download_and_websocket_through_changes(env, proxy, port)
    finally:
        if not dynamic:
            await proxy.stop()


async def _download_and_websocket_through_changes(env: Env, proxy: NginxProxy, port: int) -> None:
    await proxy.add_route("/user/frank/", env.target(1), {})
    timings = []
    step = HUGE // 100
    async with aiohttp.ClientSession() as s, \
            s.ws_connect(f"http://127.0.0.1:{port}/user/frank/ws") as ws, \
            s.get(f"http://127.0.0.1:{port}/user/frank/huge") as download:
        assert download.status == 200 and download.content_length == HUGE
        received = 0
        for i in range(100):
            while received < step * (i + 1):  # the download moves on between changes
                received += len(await download.content.read(min(4 * CHUNK, step * (i + 1) - received)))
            t0 = time.monotonic()
            if i % 2:
                await proxy.delete_route(f"/user/g{i - 1}/")
                timings.append(time.monotonic() - t0)
                assert (await get(env, f"/user/g{i - 1}/api", port=port))[0] == 404
            else:
                await proxy.add_route(f"/user/g{i}/", env.target(i % 3), {})
                timings.append(time.monotonic() - t0)
                # A request right after add_route returns reaches the new route, never a 5xx.
                status, body = await get(env, f"/user/g{i}/api", port=port)
                assert status == 200 and body["port"] == env.upstreams[i % 3], (i, status, body)
            await ws.send_str(f"ping{i}")
            assert (await ws.receive_str(timeout=5)) == f"{env.upstreams[1]}:ping{i}"
        while chunk := await download.content.read(4 * CHUNK):
            received += len(chunk)
        assert received == HUGE
    assert not [spec for spec in await proxy.get_all_routes() if spec.startswith("/user/g")]
    await proxy.delete_route("/user/frank/")
    timings.sort()
    print(f"100 route changes ({'route table' if proxy.dynamic else 'reloads'}) with a 2 GiB "
          f"download and a websocket open: p50 "
          f"{1000 * timings[50]:.0f} ms, max {1000 * timings[-1]:.0f} ms")


async def test_reload_latency_with_200_routes(env: Env, proxy: NginxProxy) -> None:
    await asyncio.gather(*[proxy.add_route(f"/user/many{i}/", env.target(i % 3), {}) for i in range(200)])
    timings = []
    for i in range(5):
        t0 = time.monotonic()
        await proxy.add_route(f"/user/late{i}/", env.target(0), {})
        timings.append(time.monotonic() - t0)
    assert (await get(env, "/user/many150/x"))[1]["port"] == env.upstreams[0]
    await asyncio.gather(*[proxy.delete_route(spec) for spec in await proxy.get_all_routes()])
    timings.sort()
    print(f"add_route with 200 routes: p50 {1000 * timings[2]:.0f} ms, max {1000 * timings[-1]:.0f} ms")
    assert timings[-1] < 2


async def test_stop_and_check_running_restarts_with_routes(env: Env, proxy: NginxProxy) -> None:
    await proxy.add_route("/user/gina/", env.target(1), {})
    os.kill(proxy._pid, signal.SIGKILL)  # nginx crashed (its workers linger until they notice)
    deadline = time.monotonic() + 5
    while proxy._running_pid() is not None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
    await proxy.check_running()
    status, body = await get(env, "/user/gina/x")
    assert status == 200 and body["port"] == env.upstreams[1]
    await proxy.delete_route("/user/gina/")
    await proxy.stop()
    assert proxy._running_pid() is None
    with pytest.raises(aiohttp.ClientConnectionError):
        await get(env, "/user/gina/x")


def _end_orphans(master: int | None) -> None:
    """Teardown: no worker of a killed master left holding a port, whatever the test found."""
    for pid in _orphans(master, {}):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


async def _new_nginx_serving(env: Env, proxy: NginxProxy, old: int, port: int,
                             timeout: float) -> Any:
    """Until an nginx other than `old`, started by `proxy`'s periodic check, serves a route
    added after it started (the old workers, should any live, do not know it): its answer."""
    deadline = time.monotonic() + timeout
    while not (proxy._pid not in (None, old) and proxy._running_pid() is not None
               and proxy._known_workers):  # set once start() saw the new nginx serve
        assert time.monotonic() < deadline, f"no new nginx within {timeout} s"
        await asyncio.sleep(0.1)
    await proxy.add_route("/user/new/", env.target(0), {})
    status, body = await get(env, "/user/new/x", port=port)
    assert status == 200, body
    await proxy.delete_route("/user/new/")
    return body


async def test_workers_the_hub_never_saw_do_not_keep_a_new_nginx_out(env: Env) -> None:
    """The master SIGKILLed alone just after it forked workers the hub had not seen yet (a reload
    in flight, a worker replaced since the last check): they keep the listening socket, and a new
    master cannot bind. The check ends them too (the master's process group), and a new nginx
    serves the routes."""
    port = free_port()
    proxy = env.proxy("orphans", public_url=f"http://127.0.0.1:{port}/", check_running_interval=1)
    await proxy.start()
    old = proxy._pid
    try:
        await proxy.add_route("/user/olga/", env.target(2), {})
        workers = set(_workers(old))
        assert not _orphans(old, {})  # a live nginx's workers are its own, never orphans
        os.kill(old, signal.SIGKILL)
        proxy._known_workers = {}  # as if forked after the hub's last look
        assert (await _new_nginx_serving(env, proxy, old, port, 15))["port"] == env.upstreams[0]
        assert not any(_cmdline(w).startswith(b"nginx") for w in workers)
        status, body = await get(env, "/user/olga/x", port=port)  # the routes from before
        assert status == 200 and body["port"] == env.upstreams[2]
    finally:
        await proxy.stop()
        _end_orphans(old)


async def test_a_restart_that_fails_is_tried_again_at_the_next_check(env: Env) -> None:
    """nginx killed with its workers while something else takes its port for a few seconds: that
    start fails (nginx cannot bind), and the periodic check keeps trying; once the port is free
    a new nginx serves the routes. (A failed start used to end the check for good: no proxy
    until the hub restarted.)"""
    port = free_port()
    proxy = env.proxy("retry", public_url=f"http://127.0.0.1:{port}/", check_running_interval=1)
    await proxy.start()
    holder = socket.socket()
    old = proxy._pid
    try:
        await proxy.add_route("/user/rita/", env.target(1), {})
        for pid in [old, *_workers(old)]:
            os.kill(pid, signal.SIGKILL)
        # Take the port before the check runs again (nothing here lets the event loop run).
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        deadline = time.monotonic() + 2
        while True:
            try:
                holder.bind(("127.0.0.1", port))
                break
            except OSError:
                assert time.monotonic() < deadline, "the killed nginx kept its port"
                time.sleep(0.005)
        holder.listen()
        await asyncio.sleep(4.5)  # a check at most 1 s away; nginx tries to bind for 2.5 s
        assert not proxy._known_workers  # no start got through meanwhile
        holder.close()
        assert (await _new_nginx_serving(env, proxy, old, port, 15))["port"] == env.upstreams[0]
        status, body = await get(env, "/user/rita/x", port=port)  # the routes from before
        assert status == 200 and body["port"] == env.upstreams[1]
    finally:
        holder.close()
        await proxy.stop()
        _end_orphans(old)


async def test_tls_with_http2_towards_browsers(env: Env) -> None:
    """The site's certificate and key (JupyterHub.ssl_cert/ssl_key, which JupyterHub hands to its
    proxy), here from the lab's CA: HTTPS and wss reach the upstream with X-Forwarded-Proto https,
    and a browser's HTTP/2 request is served over HTTP/2."""
    import ssl

    from gateway.lab.tls import make_ca_and_server_cert

    tls = env.dir / "tls"
    make_ca_and_server_cert(tls, ["localhost"], ["127.0.0.1"])
    port = free_port()
    p = env.proxy("tls", public_url=f"https://127.0.0.1:{port}/", ssl_cert=str(tls / "server.crt"),
                  ssl_key=str(tls / "server.key"))
    await p.start()
    try:
        await p.add_route("/", env.target(0), {"hub": True})
        await p.add_route("/user/tess/", env.target(2), {})
        context = ssl.create_default_context(cafile=str(tls / "ca.crt"))
        async with aiohttp.ClientSession() as s:
            async with s.get(f"https://127.0.0.1:{port}/hub/x", ssl=context,
                             headers={"X-Forwarded-Proto": "http"}) as r:
                body = await r.json()
                assert r.status == 200 and body["port"] == env.upstreams[0]
                assert (body["x_forwarded_proto"], body["x_real_ip"]) == ("https", "127.0.0.1")
            async with s.ws_connect(f"wss://127.0.0.1:{port}/user/tess/ws", ssl=context) as ws:
                await ws.send_str("hello")
                assert await ws.receive_str(timeout=5) == f"{env.upstreams[2]}:hello"
            with pytest.raises(aiohttp.ClientConnectorCertificateError):  # not some default cert
                await s.get(f"https://127.0.0.1:{port}/hub/x", ssl=ssl.create_default_context())
        context.set_alpn_protocols(["h2", "http/1.1"])
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
        writer.close()
        curl = await asyncio.create_subprocess_exec(
            "curl", "-sS", "--http2", "--cacert", str(tls / "ca.crt"), "-w", "\n%{http_version}",
            f"https://127.0.0.1:{port}/user/tess/api", stdout=asyncio.subprocess.PIPE)
        out, _ = await curl.communicate()
        body, _, version = out.decode().rpartition("\n")
        assert curl.returncode == 0 and version == "2", out
        assert json.loads(body)["port"] == env.upstreams[2]
    finally:
        await p.stop()


@pytest.mark.parametrize("knows_pid", [True, False])
async def test_a_sites_own_nginx_through_include_file_and_reload_command(env: Env, knows_pid: bool) -> None:
    """should_start = False: the site's nginx includes our file (a glob, so that it starts before
    the hub wrote it) and the hub runs the site's reload command."""
    site = env.dir / f"site-{knows_pid}"
    site.mkdir()
    port = free_port()
    include = site / "hpcgate-routes.conf"
    conf = site / "nginx.conf"
    conf.write_text(f"""daemon off; pid {site}/nginx.pid; error_log {site}/error.log;
events {{}}
http {{
    client_body_temp_path {site}/body; proxy_temp_path {site}/proxy; fastcgi_temp_path {site}/f;
    uwsgi_temp_path {site}/u; scgi_temp_path {site}/s;
    include {site}/hpcgate-routes*.conf;
}}
""")
    proc = await asyncio.create_subprocess_exec(env.nginx, "-c", str(conf), "-p", f"{site}/")
    while not (site / "nginx.pid").exists():
        await asyncio.sleep(0.01)
    try:
        p = NginxProxy(state_dir=str(site / "state"), should_start=False, include_file=str(include),
                       public_url=f"http://127.0.0.1:{port}/",
                       pid_file=str(site / "nginx.pid") if knows_pid else "",
                       reload_command=[env.nginx, "-s", "reload", "-c", str(conf), "-p", f"{site}/"])
        await p.add_route("/", env.target(0), {"hub": True})
        for _ in range(3):  # each request right after the change returns sees it
            await p.add_route("/user/hank/", env.target(2), {})
            status, body = await get(env, "/user/hank/x", {"X-Real-Ip": "6.6.6.6"}, port=port)
            assert status == 200 and body["port"] == env.upstreams[2] and body["x_real_ip"] == "127.0.0.1"
            await p.delete_route("/user/hank/")
            assert (await get(env, "/user/hank/x", port=port))[1]["port"] == env.upstreams[0]
        assert "hank" not in include.read_text()
    finally:
        proc.terminate()
        await proc.wait()
