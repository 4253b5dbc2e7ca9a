"""One large file streamed four ways, side by side in one run, on the lab:

  (i)   directly from hpcgate's single-user server, on its own loopback (inside node c2);
  (ii)  the anchor: a raw OpenSSH `ssh -L` tunnel (aes128-gcm@openssh.com) from the hub host to an
        sshd on c2, to a stock Jupyter server there (jupyter_server's own /files/ handler) serving
        the same file: what a researcher does without a gateway;
  (iii) the same raw `ssh -L`, to hpcgate's server: the transport alone, hpcgate's server on both
        sides;
  (iv)  the whole hpcgate path in reverse mode: the hub's proxy, hpcgate-nginx -> 127.0.0.1:P (the
        tunnel endpoint's sshd) -> the job's ssh -R -> hpcgate's server;
  (v)   the same path through configurable-http-proxy instead, started beside nginx with the
        hub's routes copied in: the same tunnel, the same server, only the proxy differs.

(ii)-(v) take turns, one whole-file GET each per round, so a busy moment of the machine does not
fall on one path only. For each: MB/s (10^6 bytes per second, median of --runs GETs), 64 KiB
Range seeks (p50/p95 over --seeks random offsets on one keep-alive connection), the peak RSS
(VmHWM) of each process on the path, and the CPU seconds each process spent per GiB streamed.
The last line is `ratio=<(iv) MB/s / (ii) MB/s>`; the lines before it compare (iv) and (v) with (ii)
and (iii).

    python -m benchmarks.tunnel_throughput --size 2G
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

USER = "alice"
CLIENT_TIMEOUT = 120  # seconds a path may stay silent before the benchmark gives up on it


# -- the HTTP client (also run inside c2's namespace) -----------------------------------------

def _request(sock: socket.socket, path: str, token: str, extra: str = "") -> None:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: token {token}\r\n"
                 f"{extra}\r\n".encode())


def _read_response(sock: socket.socket, buf: bytearray) -> tuple[int, int]:
    """Read one response; return (status, body bytes). The body is discarded as it arrives."""
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the headers")
        head += chunk
    header, rest = head.split(b"\r\n\r\n", 1)
    lines = header.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next(int(x.split(":", 1)[1]) for x in lines if x.lower().startswith("content-length"))
    got = len(rest)
    view = memoryview(buf)
    while got < length:
        n = sock.recv_into(view, min(len(buf), length - got))
        if not n:
            raise ConnectionError("closed in the body")
        got += n
    return status, got


def stream_once(host: str, port: int, path: str, token: str, size: int) -> float:
    """One whole-file GET on a new connection; MB/s."""
    buf = bytearray(1 << 20)
    with socket.create_connection((host, port), timeout=CLIENT_TIMEOUT) as sock:
        t0 = time.perf_counter()
        _request(sock, path, token)
        status, got = _read_response(sock, buf)
        elapsed = time.perf_counter() - t0
    if status != 200 or got != size:
        raise RuntimeError(f"GET {path}: status {status}, {got} of {size} bytes")
    return size / elapsed / 1e6


def seek_latencies(host: str, port: int, path: str, token: str, size: int,
                   seeks: int) -> dict[str, float]:
    """64 KiB Range GETs at random offsets on one keep-alive connection: p50 and p95 in ms."""
    buf = bytearray(1 << 20)
    latencies = []
    rng = random.Random(7)
    with socket.create_connection((host, port), timeout=CLIENT_TIMEOUT) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(seeks):
            offset = rng.randrange(0, size - 65536)
            t0 = time.perf_counter()
            _request(sock, path, token, f"Range: bytes={offset}-{offset + 65535}\r\n")
            status, got = _read_response(sock, buf)
            latencies.append((time.perf_counter() - t0) * 1000)
            if status != 206 or got != 65536:
                raise RuntimeError(f"Range GET: status {status}, {got} bytes")
    latencies.sort()
    return {"seek_p50_ms": statistics.median(latencies),
            "seek_p95_ms": latencies[max(0, int(len(latencies) * 0.95) - 1)]}


def measure(host: str, port: int, path: str, token: str, size: int, runs: int,
            seeks: int) -> dict[str, Any]:
    rates = [stream_once(host, port, path, token, size) for _ in range(runs)]
    return {"mbps": statistics.median(rates), "runs": rates,
            **seek_latencies(host, port, path, token, size, seeks)}


# -- the lab side --------------------------------------------------------------------------------

def parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+)([KMG]?)", text.strip().upper())
    if not m:
        raise argparse.ArgumentTypeError(f"size like 2G, 512M: not {text!r}")
    return int(m.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[m.group(2)]


def make_wav(path: Path, size: int) -> None:
    import struct

    header = (b"RIFF" + struct.pack("<I", min(size - 8, 0xFFFFFFFF)) + b"WAVEfmt "
              + struct.pack("<IHHIIHH", 16, 1, 2, 48000, 192000, 4, 16)
              + b"data" + struct.pack("<I", min(size - 44, 0xFFFFFFFF)))
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(size)  # sparse: the path is measured, not the disk


def peak_rss_mb(pid: int | None) -> float | None:
    if not pid:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes (all their threads) so far."""
    ticks = 0
    for pid in pids:
        try:  # fields after the ")" that ends the command name: utime and stime are the 12th, 13th
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return ticks / os.sysconf("SC_CLK_TCK")


@dataclass
class Route:
    """One way to the file from the hub host's loopback, and what it cost."""

    name: str
    port: int
    path: str
    token: str
    processes: dict[str, list[int]]  # CPU groups on this route
    rates: list[float] = field(default_factory=list)
    seeks: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds, all of this route's GETs
    moved: int = 0

    @contextlib.contextmanager
    def charged(self, nbytes: int) -> Iterator[None]:
        """Add the CPU its processes (and this benchmark's client) spend inside to this route."""
        before = {name: cpu_seconds(pids) for name, pids in self.processes.items()}
        t0 = time.process_time()
        yield
        for name, pids in self.processes.items():
            self.cpu[name] = self.cpu.get(name, 0.0) + cpu_seconds(pids) - before[name]
        client = "HTTP client (this benchmark)"
        self.cpu[client] = self.cpu.get(client, 0.0) + time.process_time() - t0
        self.moved += nbytes

    def mbps(self) -> float:
        return statistics.median(self.rates)


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def pgrep(user: str, pattern: str) -> list[int]:
    out = subprocess.run(["pgrep", "-u", user, "-f", pattern], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def wait_port(host: str, port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {host}:{port}")


def wait_http(host: str, port: int, path: str, token: str, size: int,
              proc: subprocess.Popen[bytes], log: Path, timeout: float = 90) -> None:
    """Wait until `path` answers a 64 KiB Range request (the server behind a forward is up)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            seek_latencies(host, port, path, token, size, 1)
            return
        except (OSError, RuntimeError, StopIteration) as err:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the stock Jupyter server did not answer ({err}); see {log}"
                                   ) from err
            time.sleep(0.5)


def start_chp(routes: dict[str, Any], log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """configurable-http-proxy on loopback with `routes` (the hub's, from its proxy API)."""
    from gateway.lab.procs import free_port

    chp = str(Path(sys.executable).parent / "configurable-http-proxy")
    port, api_port, token = free_port(), free_port(), secrets.token_hex(16)
    with open(log, "ab") as out:
        proc = subprocess.Popen(  # as JupyterHub starts it: the token in the environment
            [chp, "--ip", "127.0.0.1", "--port", str(port), "--api-ip", "127.0.0.1",
             "--api-port", str(api_port)], env={**os.environ, "CONFIGPROXY_AUTH_TOKEN": token},
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_port("127.0.0.1", api_port)
        for spec, route in routes.items():
            req = urllib.request.Request(  # noqa: S310 - loopback
                f"http://127.0.0.1:{api_port}/api/routes{spec}", method="POST",
                data=json.dumps({"target": route["target"]}).encode(),
                headers={"Authorization": f"token {token}"})
            urllib.request.urlopen(req, timeout=10).close()  # noqa: S310
    except BaseException:
        proc.terminate()
        proc.wait()
        raise
    return proc, port


def api(hub: Any, method: str, path: str, body: Any = None) -> Any:
    req = urllib.request.Request(f"{hub.url}/hub/api{path}", method=method,  # noqa: S310
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": f"token {hub.service_token}"})
    with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310 - the lab hub
        text = resp.read().decode()
        return json.loads(text) if text else None


def run_bench(args: argparse.Namespace) -> int:
    from gateway.lab import Lab
    from gateway.lab.hub import LabHub
    from gateway.lab.procs import free_port
    from gateway.lab.site import PINNED_NODES, with_changes
    from gateway.lab.sshd import sshd_config

    lab = Lab(args.lab_dir)
    was_up = lab.status()["ok"]  # a lab that was running is left running
    info = lab.up(nodes=2)
    c2 = info["nodes"]["c2"]
    state = Path("/var/tmp") / f"hpcgate-bench-tunnel-{uuid.uuid4().hex[:8]}"
    hub = LabHub(info, state, policy=with_changes(PINNED_NODES, {"connection": {"mode": "reverse"}}),
                 extra_config="c.JupyterHub.allow_named_servers = True\n")
    # The lab's home for the user (its directory's homeDirectory): /home is every lab's.
    home = Path(info["users"][USER]["workdir"])
    wav = home / f"hpcgate-bench-{args.size}.wav"
    server = f"bench{uuid.uuid4().hex[:6]}"  # its own state dir: a test hub may use the default
    procs: list[subprocess.Popen[bytes]] = []
    cleanup: list[Path] = []
    try:
        hub.start()
        hub.add_users([USER])  # with the directory's identity: the server works in `home`
        api(hub, "POST", f"/users/{USER}/servers/{server}", {"partition": "long"})
        deadline = time.monotonic() + 180
        while not (api(hub, "GET", f"/users/{USER}")["servers"].get(server) or {}).get("ready"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start; see {hub.log}")
            time.sleep(0.3)
        token = api(hub, "POST", f"/users/{USER}/tokens", {"expires_in": 3600})["token"]
        make_wav(wav, args.size)
        os.chown(wav, info["users"][USER]["uid"], info["users"][USER]["gid"])
        with open(wav, "rb") as f:  # into the page cache first, so no path pays for it
            while f.readinto(bytearray(1 << 22)):
                pass
        path = f"/user/{USER}/{server}/files/{wav.name}"
        server_dir = home / ".hpcgate" / "servers" / server
        log = (server_dir / "job.log").read_text()
        server_port = int(re.findall(r"on 127\.0\.0\.1:(\d+)", log)[-1])
        [launcher] = pgrep(USER, f"gateway.job.launcher {server_dir}/launch.json")
        [job_ssh] = pgrep(USER, f"^ssh -N -T -F /dev/null .*IdentityFile={server_dir}/")
        proxy = hub.proxy_pid()  # hpcgate-nginx's master; its workers move the bytes
        proxy_tree = [proxy, *children(proxy)] if proxy else []
        endpoint = info["pids"]["tunnel-endpoint"]
        chp, chp_port = start_chp(api(hub, "GET", "/proxy"), state / "chp.log")
        procs.append(chp)

        # (i) from inside c2, straight to the server's loopback port
        client = [sys.executable, "-m", "benchmarks.tunnel_throughput", "--client",
                  f"127.0.0.1:{server_port}", "--path", path, "--size", str(args.size),
                  "--runs", str(args.runs), "--seeks", str(args.seeks)]
        out = subprocess.run(["nsenter", f"--net={c2['namespace_path']}", *client], input=token,
                             capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parents[1])
        direct = json.loads(out.stdout)

        # (ii) a stock Jupyter server on c2's loopback, as alice, serving her home
        uid, gid = info["users"][USER]["uid"], info["users"][USER]["gid"]
        runtime = Path(tempfile.mkdtemp(prefix="hpcgate-bench-stock-", dir="/var/tmp"))
        cleanup.append(runtime)
        os.chown(runtime, uid, gid)
        stock_port, stock_token = free_port(), secrets.token_hex(16)
        with open(state / "stock_server.log", "ab") as stock_log:
            stock = subprocess.Popen(  # token in the environment, never in argv
                ["nsenter", f"--net={c2['namespace_path']}", "setpriv", f"--reuid={uid}",
                 f"--regid={gid}", "--init-groups", sys.executable, "-m", "jupyter_server",
                 "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={stock_port}",
                 "--ServerApp.port_retries=0", f"--ServerApp.root_dir={home}"],
                env={"PATH": os.environ["PATH"], "HOME": str(home), "USER": USER,
                     "JUPYTER_TOKEN": stock_token, "JUPYTER_RUNTIME_DIR": str(runtime)},
                cwd=home, stdout=stock_log, stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(stock)

        # a raw ssh -L from the hub host to an sshd on c2, to both servers
        ssh_dir = Path(info["dir"]) / "ssh"
        raw_port = free_port()
        conf = state / "bench_sshd_config"
        conf.write_text(sshd_config(ssh_dir, raw_port, [c2["address"]]).replace(
            f"PidFile {ssh_dir}/sshd.pid", f"PidFile {state}/bench_sshd.pid"))
        with open(state / "bench_sshd.log", "ab") as err:
            raw_sshd = subprocess.Popen(["nsenter", f"--net={c2['namespace_path']}",
                                         "/usr/sbin/sshd", "-D", "-e", "-f", str(conf)],
                                        stderr=err, start_new_session=True)
        procs.append(raw_sshd)
        wait_port(c2["address"], raw_port)
        to_stock, to_hpcgate = free_port(), free_port()
        raw_ssh = subprocess.Popen(
            ["ssh", "-N", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
             "-o", "UserKnownHostsFile=/dev/null", "-o", "ExitOnForwardFailure=yes",
             "-i", info["ssh"]["user_keys"][USER], "-c", "aes128-gcm@openssh.com",
             "-p", str(raw_port), "-L", f"127.0.0.1:{to_stock}:127.0.0.1:{stock_port}",
             "-L", f"127.0.0.1:{to_hpcgate}:127.0.0.1:{server_port}",
             f"{USER}@{c2['address']}"], stderr=subprocess.DEVNULL)
        procs.append(raw_ssh)
        wait_port("127.0.0.1", to_hpcgate)
        wait_http("127.0.0.1", to_stock, f"/files/{wav.name}", stock_token, args.size, stock,
                  state / "stock_server.log")
        raw_sshd_session = [c for p in children(raw_sshd.pid) for c in [p, *children(p)]]
        sshd_sessions = children(endpoint)
        raw = {"raw ssh -L client": [raw_ssh.pid], "raw sshd on c2": raw_sshd_session}
        tunnel = {"sshd -i at the tunnel endpoint": [c for s in sshd_sessions for c in [s, *children(s)]],
                  "ssh -R in the job": [job_ssh], "hpcgate single-user server": [launcher]}
        routes = [
            Route("raw ssh -L -> stock Jupyter server", to_stock, f"/files/{wav.name}",
                  stock_token, {**raw, "stock Jupyter server": [stock.pid]}),
            Route("raw ssh -L -> hpcgate server", to_hpcgate, path, token,
                  {**raw, "hpcgate single-user server": [launcher]}),
            Route("hpcgate reverse via nginx", hub.proxy_port, path, token,
                  {"proxy (nginx: master + workers)": proxy_tree, **tunnel}),
            Route("hpcgate reverse via CHP", chp_port, path, token,
                  {"proxy (configurable-http-proxy)": [chp.pid], **tunnel}),
        ]
        for _ in range(args.runs):  # in turns: one GET per route per round
            for route in routes:
                with route.charged(args.size):
                    route.rates.append(stream_once("127.0.0.1", route.port, route.path,
                                                   route.token, args.size))
        for route in routes:
            with route.charged(65536 * args.seeks):
                route.seeks = seek_latencies("127.0.0.1", route.port, route.path, route.token,
                                             args.size, args.seeks)

        rss = {
            "proxy (nginx: the largest process)": max((peak_rss_mb(p) or 0) for p in proxy_tree) or None,
            "proxy (configurable-http-proxy)": peak_rss_mb(chp.pid),
            "ssh -R in the job": peak_rss_mb(job_ssh),
            "sshd -i at the tunnel endpoint": max((peak_rss_mb(p) or 0) for p in
                                                  sshd_sessions + [c for s in sshd_sessions
                                                                   for c in children(s)]) or None,
            "hpcgate single-user server": peak_rss_mb(launcher),
            "stock Jupyter server": peak_rss_mb(stock.pid),
            "raw ssh -L client": peak_rss_mb(raw_ssh.pid),
            "raw sshd on c2": max((peak_rss_mb(p) or 0) for p in raw_sshd_session) or None,
        }
        print(f"hpcgate tunnel throughput: {args.size / 2**30:.2f} GiB file, medians of "
              f"{args.runs} (in turns), {args.seeks} seeks of 64 KiB; load average "
              f"{', '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
        d = direct
        print(f"  {'direct (hpcgate server, c2 loopback)':40s} {d['mbps']:7.0f} MB/s  (runs "
              f"{', '.join(f'{x:.0f}' for x in d['runs'])})  seek p50 {d['seek_p50_ms']:.2f} ms"
              f"  p95 {d['seek_p95_ms']:.2f} ms")
        for r in routes:
            print(f"  {r.name:40s} {r.mbps():7.0f} MB/s  (runs "
                  f"{', '.join(f'{x:.0f}' for x in r.rates)})  seek p50 "
                  f"{r.seeks['seek_p50_ms']:.2f} ms  p95 {r.seeks['seek_p95_ms']:.2f} ms")
        print("  peak RSS (VmHWM):")
        for name, mb in rss.items():
            print(f"    {name:38s} {mb:8.1f} MB" if mb else f"    {name:38s}      n/a")
        for r in routes:
            gib = r.moved / 2**30
            print(f"  CPU s per GiB, {r.name}: total {sum(r.cpu.values()) / gib:.2f}")
            for name, seconds in r.cpu.items():
                print(f"    {name:38s} {seconds / gib:8.2f}")
        anchor, same_server, hpcgate, via_chp = routes
        for r in (via_chp, hpcgate):
            print(f"  {r.name}: / raw ssh -L to the stock server {r.mbps() / anchor.mbps():.2f}; "
                  f"/ raw ssh -L to hpcgate's server {r.mbps() / same_server.mbps():.2f}; CPU s per "
                  f"GiB {sum(r.cpu.values()) / (r.moved / 2**30):.2f} against the anchor's "
                  f"{sum(anchor.cpu.values()) / (anchor.moved / 2**30):.2f}")
        print(f"ratio={hpcgate.mbps() / anchor.mbps():.2f}")
        return 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
        wav.unlink(missing_ok=True)
        try:  # the job ends before the hub does (hub.stop() leaves jobs alone)
            api(hub, "DELETE", f"/users/{USER}/servers/{server}")
            deadline = time.monotonic() + 60
            while (server in api(hub, "GET", f"/users/{USER}")["servers"]
                   and time.monotonic() < deadline):
                time.sleep(0.5)
        except OSError:
            pass
        hub.stop()
        for directory in [state, *cleanup, home / ".hpcgate" / "servers" / server]:
            shutil.rmtree(directory, ignore_errors=True)
        if not was_up:
            lab.down()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=parse_size, default=parse_size("2G"))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seeks", type=int, default=60)
    parser.add_argument("--lab-dir", default=os.environ.get("HPCGATE_TEST_LAB_DIR")
                        or os.environ.get("HPCGATE_LAB_DIR", "/var/tmp/hpcgate-lab"))
    parser.add_argument("--client", help=argparse.SUPPRESS)  # host:port, token on stdin
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        host, port = args.client.rsplit(":", 1)
        token = sys.stdin.read().strip()
        print(json.dumps(measure(host, int(port), args.path, token, args.size, args.runs,
                                 args.seeks)))
        return 0
    return run_bench(args)


if __name__ == "__main__":
    sys.exit(main())
