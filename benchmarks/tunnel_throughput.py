"""One large file streamed three ways, side by side in one run, on the lab:

  (i)   directly from the single-user server, on its own loopback (inside node c2);
  (ii)  through a raw OpenSSH `ssh -L` tunnel (aes128-gcm@openssh.com) from the hub host to an
        sshd on c2, to the same server;
  (iii) through the whole hpcgate path in reverse mode: configurable-http-proxy -> 127.0.0.1:P
        (the tunnel endpoint's sshd) -> the job's ssh -R -> the server.

For each: MB/s (10^6 bytes per second, median of --runs whole-file GETs), 64 KiB Range seeks
(p50/p95 over --seeks random offsets on one keep-alive connection), and the peak RSS (VmHWM) of
each process on the path, and the CPU seconds each process on (ii) and (iii) spent per GiB streamed
(all of that path's GETs and seeks, divided by the GiB moved). The last line is
`ratio=<(iii) MB/s / (ii) MB/s>`.

    python -m benchmarks.tunnel_throughput --size 2G
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

USER = "alice"
T = TypeVar("T")


# -- the HTTP client (also run inside c2's namespace) -----------------------------------------

def _request(sock: socket.socket, path: str, token: str, extra: str = "") -> None:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: token {token}\r\n"
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


def measure(host: str, port: int, path: str, token: str, size: int, runs: int,
            seeks: int) -> dict[str, Any]:
    buf = bytearray(1 << 20)
    rates = []
    for _ in range(runs):
        with socket.create_connection((host, port)) as sock:
            t0 = time.perf_counter()
            _request(sock, path, token)
            status, got = _read_response(sock, buf)
            elapsed = time.perf_counter() - t0
        if status != 200 or got != size:
            raise RuntimeError(f"GET {path}: status {status}, {got} of {size} bytes")
        rates.append(size / elapsed / 1e6)
    latencies = []
    rng = random.Random(7)
    with socket.create_connection((host, port)) as sock:
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
    return {"mbps": statistics.median(rates), "runs": rates,
            "seek_p50_ms": statistics.median(latencies),
            "seek_p95_ms": latencies[max(0, int(len(latencies) * 0.95) - 1)]}


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


def measure_cpu(groups: dict[str, list[int]], gib: float,
                run: Callable[[], T]) -> tuple[T, dict[str, float]]:
    """`run()`'s result and each process group's CPU seconds per GiB during it (this process: the
    benchmark's own HTTP client)."""
    before = {name: cpu_seconds(pids) for name, pids in groups.items()}
    t0 = time.process_time()
    result = run()
    per_gib = {name: (cpu_seconds(pids) - before[name]) / gib for name, pids in groups.items()}
    per_gib["HTTP client (this benchmark)"] = (time.process_time() - t0) / gib
    return result, per_gib


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


def api(hub: Any, method: str, path: str, body: Any = None) -> Any:
    req = urllib.request.Request(f"{hub.url}/hub/api{path}", method=method,  # noqa: S310
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": f"token {hub.service_token}"})
    with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310 - the lab hub
        text = resp.read().decode()
        return json.loads(text) if text else None


def run_bench(args: argparse.Namespace) -> int:
    from gateway.lab import Lab
    from gateway.lab.procs import free_port
    from gateway.lab.sshd import sshd_config
    from gateway.labhub import LabHub

    lab = Lab(args.lab_dir)
    was_up = lab.status()["ok"] and lab.info().get("node_count") == 2
    info = lab.up(nodes=2)
    c2 = info["nodes"]["c2"]
    state = Path("/var/tmp") / f"hpcgate-bench-tunnel-{uuid.uuid4().hex[:8]}"
    hub = LabHub(info, state, extra_config='c.BatchSpawner.connection_mode = "reverse"\n'
                                           'c.BatchSpawner.node = "c2"\n'
                                           "c.JupyterHub.allow_named_servers = True\n")
    home = Path(f"/home/{USER}")
    wav = home / f"hpcgate-bench-{args.size}.wav"
    server = f"bench{uuid.uuid4().hex[:6]}"  # its own state dir: other labs share the homes
    procs: list[subprocess.Popen[bytes]] = []
    try:
        hub.start()
        try:
            api(hub, "POST", f"/users/{USER}")
        except urllib.error.HTTPError as err:
            if err.code != 409:  # 409: the hub made the user already (allowed_users)
                raise
        api(hub, "POST", f"/users/{USER}/servers/{server}", {})
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
        [launcher] = pgrep(USER, f"gateway.launcher {server_dir}/launch.json")
        [job_ssh] = pgrep(USER, f"^ssh -N -T -F /dev/null .*IdentityFile={server_dir}/")
        proxy = hub.proxy_pid()
        endpoint = info["pids"]["tunnel-endpoint"]
        results: dict[str, dict[str, Any]] = {}

        # (i) from inside c2, straight to the server's loopback port
        client = [sys.executable, "-m", "benchmarks.tunnel_throughput", "--client",
                  f"127.0.0.1:{server_port}", "--path", path, "--size", str(args.size),
                  "--runs", str(args.runs), "--seeks", str(args.seeks)]
        out = subprocess.run(["nsenter", f"--net={c2['namespace_path']}", *client], input=token,
                             capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parents[1])
        results["direct (server on c2 loopback)"] = json.loads(out.stdout)

        # (ii) raw ssh -L from the hub host to an sshd on c2, to the same server
        ssh_dir = Path(info["dir"]) / "ssh"
        raw_port = free_port()
        conf = state / "bench_sshd_config"
        conf.write_text(sshd_config(ssh_dir, raw_port, [c2["address"]]).replace(
            f"PidFile {ssh_dir}/sshd.pid", f"PidFile {state}/bench_sshd.pid"))
        with open(state / "bench_sshd.log", "ab") as err:
            procs.append(subprocess.Popen(["nsenter", f"--net={c2['namespace_path']}",
                                           "/usr/sbin/sshd", "-D", "-e", "-f", str(conf)],
                                          stderr=err, start_new_session=True))
        wait_port(c2["address"], raw_port)
        local = free_port()
        raw_ssh = subprocess.Popen(
            ["ssh", "-N", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
             "-o", "UserKnownHostsFile=/dev/null", "-o", "ExitOnForwardFailure=yes",
             "-i", info["ssh"]["user_keys"][USER], "-c", "aes128-gcm@openssh.com",
             "-p", str(raw_port), "-L", f"127.0.0.1:{local}:127.0.0.1:{server_port}",
             f"{USER}@{c2['address']}"], stderr=subprocess.DEVNULL)
        procs.append(raw_ssh)
        wait_port("127.0.0.1", local)
        raw_sshd_session = [c for p in children(procs[0].pid) for c in [p, *children(p)]]
        moved_gib = (args.size * args.runs + 65536 * args.seeks) / 2**30
        cpu: dict[str, dict[str, float]] = {}
        results["raw ssh -L (aes128-gcm)"], cpu["raw ssh -L"] = measure_cpu(
            {"raw ssh -L client": [raw_ssh.pid], "raw sshd on c2": raw_sshd_session,
             "single-user server": [launcher]}, moved_gib,
            lambda: measure("127.0.0.1", local, path, token, args.size, args.runs, args.seeks))

        # (iii) the hpcgate path
        sshd_sessions = children(endpoint)
        results["hpcgate reverse (proxy+tunnel+server)"], cpu["hpcgate reverse"] = measure_cpu(
            {"proxy (configurable-http-proxy)": [proxy] if proxy else [],
             "sshd -i at the tunnel endpoint": [c for s in sshd_sessions for c in [s, *children(s)]],
             "ssh -R in the job": [job_ssh], "single-user server": [launcher]}, moved_gib,
            lambda: measure("127.0.0.1", hub.proxy_port, path, token, args.size, args.runs,
                            args.seeks))

        rss = {
            "proxy (configurable-http-proxy)": peak_rss_mb(proxy),
            "ssh -R in the job": peak_rss_mb(job_ssh),
            "sshd -i at the tunnel endpoint": max((peak_rss_mb(p) or 0) for p in
                                                  sshd_sessions + [c for s in sshd_sessions
                                                                   for c in children(s)]) or None,
            "single-user server": peak_rss_mb(launcher),
            "raw ssh -L client": peak_rss_mb(raw_ssh.pid),
            "raw sshd on c2": max((peak_rss_mb(p) or 0) for p in raw_sshd_session) or None,
        }
        print(f"hpcgate tunnel throughput: {args.size / 2**30:.2f} GiB file, medians of "
              f"{args.runs}, {args.seeks} seeks of 64 KiB")
        for name, r in results.items():
            runs = ", ".join(f"{x:.0f}" for x in r["runs"])
            print(f"  {name:40s} {r['mbps']:7.0f} MB/s  (runs {runs})  seek p50 "
                  f"{r['seek_p50_ms']:.2f} ms  p95 {r['seek_p95_ms']:.2f} ms")
        print("  peak RSS (VmHWM):")
        for name, mb in rss.items():
            print(f"    {name:38s} {mb:8.1f} MB" if mb else f"    {name:38s}      n/a")
        for label, groups in cpu.items():
            print(f"  CPU s per GiB, {label}: total {sum(groups.values()):.2f}")
            for name, seconds in groups.items():
                print(f"    {name:38s} {seconds:8.2f}")
        ratio = (results["hpcgate reverse (proxy+tunnel+server)"]["mbps"]
                 / results["raw ssh -L (aes128-gcm)"]["mbps"])
        print(f"ratio={ratio:.2f}")
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
        try:
            api(hub, "DELETE", f"/users/{USER}/servers/{server}")
            time.sleep(2)
        except OSError:
            pass
        hub.stop()
        shutil.rmtree(state, ignore_errors=True)
        if not was_up:
            lab.down()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=parse_size, default=parse_size("2G"))
    parser.add_argument("--runs", type=int, default=3)
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
