"""hpcgate-nginx against configurable-http-proxy, in turns, in front of the same upstreams.

Both proxies run on loopback with the same 1,000 filler routes (each to a target of its own, as
users' servers are; hpcgate-nginx keeps them in its route table, without a reload) plus two real
ones:
`/user/bench/` to a static nginx (sendfile, keepalive) serving a 1 MB and a 128-byte file, and
`/user/ws/` to an aiohttp websocket echo server (a separate process). Each row alternates the two
proxies (--rounds times, median reported), so a busy moment of the shared machine does not fall on
one of them only:

  - 1 MB responses at 1, 10 and 50 concurrent clients, and 128-byte responses at 10 (wrk, req/s);
    the upstream alone is measured once for scale;
  - websocket echo of 1 MB and of 64-byte messages (4 connections, round trips per second);
  - peak RSS (VmHWM) and Pss once 20 GiB went through each (nginx: master and workers summed);
  - route add/delete latency with the 1,000 routes present (p50, p99), back to back and one at
    a time (--route-gap apart): hpcgate-nginx's add_route/delete_route, CHP's REST API.

The last line is `ratio=<nginx req/s / CHP req/s for 1 MB at 10 concurrent>`.

    python -m benchmarks.proxy_load
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

FILLER_ROUTES = 1000
ROOT = Path(__file__).resolve().parents[1]
MB = 1 << 20
SMALL = 128
WS_CONNECTIONS = 4


def free_port() -> int:
    from gateway.lab.procs import free_port as lab_free_port

    return lab_free_port()


# -- the websocket echo upstream (run as `--echo-server PORT` in its own process) ---------------

def echo_server(port: int) -> None:
    from aiohttp import WSMsgType, web

    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
            elif msg.type == WSMsgType.TEXT:
                await ws.send_str(msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/{tail:.*}", echo)
    web.run_app(app, host="127.0.0.1", port=port, print=None, handle_signals=True)


# -- processes --------------------------------------------------------------------------------

def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 15) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited ({proc.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def spawn(argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A daemon in its own session (its whole group is stopped at the end), output to `log`."""
    with open(log, "ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True, cwd=ROOT)


def make_workdir() -> Path:
    work = Path(tempfile.mkdtemp(prefix="hpcgate-bench-proxy-", dir="/tmp"))  # short: unix socket
    work.chmod(0o755)  # nginx's workers run as nobody when started as root
    (work / "www").mkdir()
    (work / "www" / "1mb").write_bytes(os.urandom(MB))
    (work / "www" / "small").write_bytes(b"s" * SMALL)
    return work


def static_nginx_conf(root: Path, port: int) -> str:
    temps = " ".join(f"{k}_temp_path {root}/tmp_{k};" for k in
                     ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return (f"daemon off; worker_processes 1; pid {root}/nginx.pid; error_log {root}/error.log;\n"
            f"events {{ worker_connections 1024; }}\n"
            f"http {{ access_log off; sendfile on; tcp_nopush on; keepalive_requests 100000; {temps}\n"
            f"  server {{ listen 127.0.0.1:{port}; root {root}/www;\n"
            f"    location ~ ^/user/bench/(.*)$ {{ try_files /$1 =404; }} }} }}\n")


def tree_memory_mb(pid: int) -> tuple[float, float]:
    """(VmHWM summed, Pss summed) of `pid` and its children (nginx: the master and its workers),
    in MB. The peaks count the pages the workers share with the master once per process; Pss
    (now) splits each shared page between its processes."""
    peak = pss = 0
    pids = [pid]
    with contextlib.suppress(OSError):
        pids += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for p in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak += int(line.split()[1])
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1])
    return peak / 1024, pss / 1024


# -- load -------------------------------------------------------------------------------------

_UNITS = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}


def wrk(port: int, path: str, connections: int, seconds: float) -> tuple[float, int]:
    """(requests/s, bytes read) from one wrk run; any error or non-2xx response fails the row."""
    out = subprocess.run(["wrk", "-t", str(min(2, connections)), "-c", str(connections),
                          "-d", f"{seconds:g}s", "--timeout", "10s", f"http://127.0.0.1:{port}{path}"],
                         capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw errors on :{port}{path}:\n{out}")
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    m = re.search(r"requests in [\d.]+\w+, ([\d.]+)(\w+) read", out)
    moved = int(float(m.group(1)) * _UNITS[m.group(2)]) if m else 0
    return rate, moved


async def ws_echo(port: int, size: int, seconds: float) -> tuple[float, int]:
    """Round trips per second over WS_CONNECTIONS websockets for `seconds`; (rate, bytes moved)."""
    import aiohttp

    payload = os.urandom(size)
    count = 0
    stop = time.monotonic() + seconds

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal count
        async with session.ws_connect(f"http://127.0.0.1:{port}/user/ws/echo", max_msg_size=0) as ws:
            while time.monotonic() < stop:
                await ws.send_bytes(payload)
                reply = await ws.receive_bytes(timeout=30)
                if len(reply) != size:
                    raise RuntimeError(f"echo of {size} bytes came back as {len(reply)}")
                count += 1

    t0 = time.monotonic()
    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*[one(session) for _ in range(WS_CONNECTIONS)])
    return count / (time.monotonic() - t0), 2 * count * size


# -- the two proxies behind one interface -----------------------------------------------------

@dataclass
class Contender:
    name: str
    port: int
    pid: Callable[[], int]
    add: Callable[[str, str], Awaitable[None]]
    delete: Callable[[str], Awaitable[None]]
    moved: int = 0
    rows: dict[str, list[float]] = field(default_factory=dict)


async def start_nginx(state: Path, port: int) -> tuple[Contender, Callable[[], Awaitable[None]]]:
    from gateway.hub.proxy.nginx import NginxProxy

    proxy = NginxProxy(state_dir=str(state), should_start=True, check_running_interval=0,
                       public_url=f"http://127.0.0.1:{port}/")
    await proxy.start()

    async def add(spec: str, target: str) -> None:
        await proxy.add_route(spec, target, {})

    return (Contender("hpcgate-nginx", port, lambda: proxy._pid or 0, add, proxy.delete_route),
            proxy.stop)


async def start_chp(log: Path, port: int
                    ) -> tuple[Contender, subprocess.Popen[bytes], Callable[[], Awaitable[None]]]:
    import aiohttp

    chp = shutil.which("configurable-http-proxy", path=str(Path(sys.executable).parent)) \
        or shutil.which("configurable-http-proxy")
    if not chp:
        raise RuntimeError("configurable-http-proxy is not installed (make setup installs it)")
    api_port, token = free_port(), secrets.token_hex(16)
    proc = spawn(  # as JupyterHub starts it: the token in the environment, never in argv
        [chp, "--ip", "127.0.0.1", "--port", str(port), "--api-ip", "127.0.0.1",
         "--api-port", str(api_port)], log, env={**os.environ, "CONFIGPROXY_AUTH_TOKEN": token})
    wait_port(api_port, proc)
    session = aiohttp.ClientSession(headers={"Authorization": f"token {token}"})
    api = f"http://127.0.0.1:{api_port}/api/routes"

    async def add(spec: str, target: str) -> None:
        async with session.post(f"{api}{spec}", json={"target": target}) as r:
            if r.status != 201:
                raise RuntimeError(f"CHP add {spec}: {r.status}")

    async def delete(spec: str) -> None:
        async with session.delete(f"{api}{spec}") as r:
            if r.status not in (204, 404):
                raise RuntimeError(f"CHP delete {spec}: {r.status}")

    return Contender("configurable-http-proxy", port, lambda: proc.pid, add, delete), proc, session.close


async def route_latencies(c: Contender, n: int, gap: float) -> list[float]:
    """n changes (add, delete, add, ...) of one route, `gap` seconds between them; ms each."""
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        if i % 2:
            await c.delete(f"/user/lat{i - 1}/")
        else:
            await c.add(f"/user/lat{i}/", "http://127.0.0.1:9")
        times.append(1000 * (time.perf_counter() - t0))
        if gap:
            await asyncio.sleep(gap)
    return times


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def run(args: argparse.Namespace) -> int:
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (make setup installs Debian's wrk)")
    work = make_workdir()
    procs: list[subprocess.Popen[bytes]] = []
    stops: list[Callable[[], Awaitable[None]]] = []
    try:
        static_port, echo_port = free_port(), free_port()
        conf = work / "static.conf"
        conf.write_text(static_nginx_conf(work, static_port))
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        procs.append(spawn([nginx, "-c", str(conf), "-p", f"{work}/"], work / "static.log"))
        procs.append(spawn([sys.executable, "-m", "benchmarks.proxy_load", "--echo-server",
                            str(echo_port)], work / "echo.log"))
        wait_port(static_port, procs[0])
        wait_port(echo_port, procs[1])

        ngx, stop_ngx = await start_nginx(work / "nginx", free_port())
        stops.append(stop_ngx)
        chp, chp_proc, close_chp = await start_chp(work / "chp.log", free_port())
        procs.append(chp_proc)
        stops.append(close_chp)
        contenders = [ngx, chp]
        for c in contenders:  # the same routes in both: 1,000 fillers and the two measured
            for i in range(0, FILLER_ROUTES, 100):
                await asyncio.gather(*[c.add(f"/user/filler{j}/", f"http://127.0.0.1:{20000 + j}")
                                       for j in range(i, i + 100)])
            await c.add("/user/bench/", f"http://127.0.0.1:{static_port}")
            await c.add("/user/ws/", f"http://127.0.0.1:{echo_port}")
            wait_port(c.port)

        http_rows = [("1 MB, c=1 (req/s)", "/user/bench/1mb", 1),
                     ("1 MB, c=10 (req/s)", "/user/bench/1mb", 10),
                     ("1 MB, c=50 (req/s)", "/user/bench/1mb", 50),
                     ("128 B, c=10 (req/s)", "/user/bench/small", 10)]
        upstream: dict[str, float] = {}
        for c in contenders:  # warm-up: connections, JIT, caches
            c.moved += wrk(c.port, "/user/bench/1mb", 10, 1)[1]
        for label, path, conns in http_rows:
            upstream[label] = wrk(static_port, path, conns, args.duration)[0]
            for _ in range(args.rounds):
                for c in contenders:
                    rate, moved = wrk(c.port, path, conns, args.duration)
                    c.rows.setdefault(label, []).append(rate)
                    c.moved += moved
        for label, size in (("websocket echo 1 MB (msg/s)", MB), ("websocket echo 64 B (msg/s)", 64)):
            for _ in range(args.rounds):
                for c in contenders:
                    rate, moved = await ws_echo(c.port, size, args.duration)
                    c.rows.setdefault(label, []).append(rate)
                    c.moved += moved
        rss: dict[str, tuple[float, float]] = {}
        for c in contenders:  # up to --fill-gib through each, in bounded steps
            for _ in range(200):
                if c.moved >= args.fill_gib * 2**30:
                    break
                c.moved += wrk(c.port, "/user/bench/1mb", 10, 5)[1]
            rss[c.name] = tree_memory_mb(c.pid())
        latency: dict[str, dict[str, list[float]]] = {c.name: {} for c in contenders}
        for mode, gap in (("back to back", 0.0), ("one at a time", args.route_gap)):
            for c in contenders:
                latency[c.name][mode] = await route_latencies(c, args.route_changes, gap)

        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"proxy_load: hpcgate-nginx vs configurable-http-proxy, {FILLER_ROUTES} routes present, "
              f"the same upstreams; {os.cpu_count()} cores shared by client, proxy and upstream "
              f"(load average {load}); medians of {args.rounds} rounds of {args.duration:g} s, in turns")
        print(f"  {'row':44s} {'upstream':>9s} {'nginx':>9s} {'CHP':>9s} {'nginx/CHP':>10s}")
        for label in [r[0] for r in http_rows] + ["websocket echo 1 MB (msg/s)",
                                                  "websocket echo 64 B (msg/s)"]:
            n, h = statistics.median(ngx.rows[label]), statistics.median(chp.rows[label])
            up = f"{upstream[label]:9.0f}" if label in upstream else f"{'-':>9s}"
            print(f"  {label:44s} {up} {n:9.0f} {h:9.0f} {n / h:10.2f}")
        for i, what in enumerate(("peak RSS", "Pss")):
            label = f"{what} after {args.fill_gib:g} GiB through (MB)"
            n, h = rss[ngx.name][i], rss[chp.name][i]
            print(f"  {label:44s} {'-':>9s} {n:9.1f} {h:9.1f} {n / h:10.2f}")
        for mode in latency[ngx.name]:
            for q, name in ((0.5, "p50"), (0.99, "p99")):
                n, h = pct(latency[ngx.name][mode], q), pct(latency[chp.name][mode], q)
                print(f"  {f'route add/delete {name}, {mode} (ms)':44s} {'-':>9s} {n:9.1f} {h:9.1f} "
                      f"{n / h:10.2f}")
        print(f"  (GiB through: nginx {ngx.moved / 2**30:.1f}, CHP {chp.moved / 2**30:.1f}; nginx's "
              f"memory is its master's and workers' summed: peak RSS counts shared pages in each, "
              f"Pss splits them; "
              f"{args.route_changes} route changes per mode, one at a time = {args.route_gap * 1000:.0f} "
              f"ms apart)")
        label = "1 MB, c=10 (req/s)"
        print(f"ratio={statistics.median(ngx.rows[label]) / statistics.median(chp.rows[label]):.2f}")
        return 0
    finally:
        for stop in reversed(stops):
            try:
                await stop()
            except Exception as err:  # the rest must still stop
                print(f"stopping: {err}", file=sys.stderr)
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--route-changes", type=int, default=100)
    parser.add_argument("--route-gap", type=float, default=0.2,
                        help="seconds between route changes in the one-at-a-time mode")
    parser.add_argument("--fill-gib", type=float, default=20,
                        help="GiB through each proxy before its peak RSS is read")
    parser.add_argument("--echo-server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.echo_server:
        echo_server(args.echo_server)
        return 0
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
