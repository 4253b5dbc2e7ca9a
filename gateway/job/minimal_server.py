"""A minimal single-user server for load tests: the hub's side of the protocol, no JupyterLab.

    hpcgate-minimal-server        # as the spawner's command: c.Spawner.cmd = ["hpcgate-minimal-server"]

It answers what the hub and the proxy ask of a single-user server (`GET {prefix}api` with the
version, any other path under the prefix with a fixed line of text) and reports activity to
`JUPYTERHUB_ACTIVITY_URL` with the server's token, at start and every
`JUPYTERHUB_ACTIVITY_INTERVAL` seconds, as jupyterhub-singleuser does. It has no kernels, no files
and no login: it serves nothing of the user's, which is why it can skip the OAuth handshake. About
12 MB and a few ms of CPU to start, so a two-core machine can hold hundreds of servers
(`benchmarks.spawn_storm`); JupyterLab needs about 100 MB and 2-3 s of CPU each.

Where it listens: a socket handed over by systemd's socket-activation convention (`LISTEN_FDS=1`,
`LISTEN_PID` = this process, fd 3: what hpcgate's launcher does, so no other job can take the
port between report and bind), else the host and port of `JUPYTERHUB_SERVICE_URL` (batchspawner).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import PackageNotFoundError, version
from typing import Any
from urllib.parse import urlsplit

LISTEN_FD = 3  # SD_LISTEN_FDS_START


def _hub_version() -> str:
    try:
        return version("jupyterhub")
    except PackageNotFoundError:
        return ""


def listening_socket(env: dict[str, str]) -> socket.socket:
    """The socket handed over (socket activation) or one bound to JUPYTERHUB_SERVICE_URL's."""
    if env.get("LISTEN_FDS") == "1" and env.get("LISTEN_PID") == str(os.getpid()):
        sock = socket.socket(fileno=LISTEN_FD)
        sock.setblocking(True)  # the launcher's asyncio-free wait left it non-blocking
        return sock
    url = urlsplit(env["JUPYTERHUB_SERVICE_URL"])
    sock = socket.create_server((url.hostname or "127.0.0.1", url.port or 0), backlog=128)
    return sock


class Handler(BaseHTTPRequestHandler):
    prefix = "/"
    server_version = "hpcgate-minimal-server"
    hub_version = ""
    user = ""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        if not path.startswith(self.prefix.rstrip("/")):
            self._send(404, b"not under this server's prefix\n", "text/plain")
        elif path.rstrip("/") == self.prefix.rstrip("/") + "/api":
            body = json.dumps({"version": "minimal", "server": self.server_version}).encode()
            self._send(200, body, "application/json")
        else:
            self._send(200, f"minimal server of {self.user}: no JupyterLab here\n".encode(),
                       "text/plain")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.hub_version:
            self.send_header("X-JupyterHub-Version", self.hub_version)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's signature
        pass  # hundreds of servers' access logs say nothing the hub's log does not


def report_activity(env: dict[str, str]) -> int:
    """POST the server's activity to the hub, as jupyterhub-singleuser does; the HTTP status."""
    now = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
    name = env.get("JUPYTERHUB_SERVER_NAME", "")
    body = json.dumps({"servers": {name: {"last_activity": now}}, "last_activity": now}).encode()
    req = urllib.request.Request(  # noqa: S310 - the hub API's URL, from the hub
        env["JUPYTERHUB_ACTIVITY_URL"], data=body, method="POST",
        headers={"Authorization": f"token {env['JUPYTERHUB_API_TOKEN']}",
                 "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return 0


def _activity_loop(env: dict[str, str], stop: threading.Event) -> None:
    interval = float(env.get("JUPYTERHUB_ACTIVITY_INTERVAL") or 300)
    while not stop.is_set():
        report_activity(env)
        stop.wait(interval)


def main() -> None:
    env = dict(os.environ)
    sock = listening_socket(env)
    Handler.prefix = env.get("JUPYTERHUB_SERVICE_PREFIX", "/")
    Handler.user = env.get("JUPYTERHUB_USER", "")
    Handler.hub_version = _hub_version()
    server = ThreadingHTTPServer(sock.getsockname()[:2], Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    server.daemon_threads = True
    stop = threading.Event()
    if env.get("JUPYTERHUB_ACTIVITY_URL"):
        threading.Thread(target=_activity_loop, args=(env, stop), daemon=True).start()

    def ended(signum: int, _frame: Any) -> None:
        stop.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, ended)
    signal.signal(signal.SIGINT, ended)
    host, port = sock.getsockname()[:2]
    print(f"hpcgate-minimal-server for {Handler.user} on {host}:{port}{Handler.prefix} "
          "(no JupyterLab: a load-test server)", flush=True)
    started = time.monotonic()
    server.serve_forever(poll_interval=0.5)
    print(f"hpcgate-minimal-server stopped after {time.monotonic() - started:.0f} s", flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
