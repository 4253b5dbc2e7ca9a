"""Login latency of a job's reverse tunnel, by the way sshd finds the job's key, side by side:

  (file)    the anchor: `AuthorizedKeysFile` naming a root-owned file (what the hub edited as root);
  (cat)     what hpcgate ships: `AuthorizedKeysCommand /usr/bin/cat FILE` run as the hub's
            account, FILE being the hub's own;
  (ask-hub) `AuthorizedKeysCommand` running a Python helper that asks an HTTP server (standing in
            for the hub's API) for the key's line.

Each sshd is the tunnel sshd_config of gateway/tunnel/sitefiles.py (keys only, forwarding only),
run as `sshd -D` on loopback, with --lines other jobs' key lines in the file besides the client's.
A login is `ssh -N` with `-R` and ExitOnForwardFailure until the forward is up (what a job does),
measured from start to the forward's confirmation; the ways take turns in each round. Needs root
(sshd) and the accounts hpcgate-tunnel and hpcgate-hub (`hpcgate lab up` makes them).
The last line is `ratio=<cat median / file median>`.

    python -m benchmarks.tunnel_keys_latency --rounds 30 --lines 500
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from gateway.lab.accounts import HUB_USER, TUNNEL_USER
from gateway.lab.procs import free_port
from gateway.tunnel.keys import entry_line, generate_key
from gateway.tunnel.sitefiles import tunnel_sshd_config

ASK_HUB = """import sys, urllib.request
with urllib.request.urlopen("http://127.0.0.1:%d/keys?fp=" + sys.argv[1], timeout=5) as r:
    sys.stdout.write(r.read().decode())
"""


def _config(work: Path, way: str, port: int, keys: Path, http_port: int) -> Path:
    text = tunnel_sshd_config(str(work / "host_key"), str(keys), TUNNEL_USER, HUB_USER,
                              strict_modes=False)
    if way == "file":
        text = text.replace(f"AuthorizedKeysFile none\nAuthorizedKeysCommand /usr/bin/cat {keys}\n"
                            f"AuthorizedKeysCommandUser {HUB_USER}\n", f"AuthorizedKeysFile {keys}\n")
    elif way == "ask-hub":
        helper = work / "ask_hub.py"
        helper.write_text(ASK_HUB % http_port)
        helper.chmod(0o644)
        text = text.replace(f"AuthorizedKeysCommand /usr/bin/cat {keys}",
                            f"AuthorizedKeysCommand {sys.executable} -I {helper} %f")
    text = f"Port {port}\nListenAddress 127.0.0.1\nPidFile {work}/{way}.pid\n" + text
    conf = work / f"{way}.conf"
    conf.write_text(text)
    return conf


def _serve_keys(lines: str) -> ThreadingHTTPServer:
    class Keys(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            body = lines.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Keys)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _login(port: int, key: Path, forward: int, known: Path) -> float:
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        ["ssh", "-N", "-i", str(key), "-p", str(port), "-o", "BatchMode=yes",
         "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes",
         "-o", "ExitOnForwardFailure=yes", "-o", "LogLevel=ERROR", "-v",
         "-R", f"127.0.0.1:{forward}:127.0.0.1:9", f"{TUNNEL_USER}@127.0.0.1"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    try:
        for line in proc.stderr:  # OpenSSH says so once sshd has confirmed the forward
            if "remote forward success" in line:
                return time.perf_counter() - t0
        raise RuntimeError(f"the login on port {port} failed (exit {proc.wait()})")
    finally:
        proc.terminate()
        proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--lines", type=int, default=500, help="other jobs' lines in the file")
    args = parser.parse_args(argv)
    hub = pwd.getpwnam(HUB_USER)
    pwd.getpwnam(TUNNEL_USER)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="hpcgate-keys-latency-"))
    work.chmod(0o755)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(work / "host_key")],
                       check=True)
        client = generate_key()
        (work / "client").write_text(client.private_openssh)
        (work / "client").chmod(0o600)
        forward = free_port()
        lines = [entry_line(generate_key().public, f"other-{i}", 40000 + i, "127.0.0.1", 8081)
                 for i in range(args.lines)]
        lines.append(entry_line(client.public, "bench", forward, "127.0.0.1", 8081))
        text = "".join(f"{line}\n" for line in lines)
        root_keys = work / "root_keys"
        root_keys.write_text(text)
        root_keys.chmod(0o644)
        hub_dir = work / "hub"
        hub_dir.mkdir(mode=0o750)
        os.chown(hub_dir, hub.pw_uid, hub.pw_gid)
        hub_keys = hub_dir / "authorized_keys"
        hub_keys.write_text(text)
        hub_keys.chmod(0o600)
        os.chown(hub_keys, hub.pw_uid, hub.pw_gid)
        server = _serve_keys(text)
        host_pub = (work / "host_key.pub").read_text().split()
        ports = {way: free_port() for way in ("file", "cat", "ask-hub")}
        (work / "known_hosts").write_text("".join(
            f"[127.0.0.1]:{p} {host_pub[0]} {host_pub[1]}\n" for p in ports.values()))
        for way, port in ports.items():
            conf = _config(work, way, port, root_keys if way == "file" else hub_keys,
                           server.server_address[1])
            subprocess.run(["/usr/sbin/sshd", "-t", "-f", str(conf)], check=True)
            procs.append(subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(conf)],
                                          stderr=subprocess.DEVNULL))
        for port in ports.values():
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        break
                time.sleep(0.05)
        times: dict[str, list[float]] = {way: [] for way in ports}
        for port in ports.values():  # one warm-up login each
            _login(port, work / "client", forward, work / "known_hosts")
        for _ in range(args.rounds):
            for way, port in ports.items():
                times[way].append(_login(port, work / "client", forward, work / "known_hosts"))
        print(f"{args.rounds} logins each, {args.lines + 1} key lines, ssh -N -R until the "
              "forward is confirmed (ms):")
        for way, values in times.items():
            values.sort()
            p95 = values[min(len(values) - 1, int(len(values) * 0.95))]
            print(f"  {way:<8} median {statistics.median(values) * 1000:6.1f}  p95 {p95 * 1000:6.1f}")
        ratio = statistics.median(times["cat"]) / statistics.median(times["file"])
        print(f"ratio={ratio:.3f}")
        server.shutdown()
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
