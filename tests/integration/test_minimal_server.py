"""The load tests' single-user server, started the way hpcgate's launcher starts a site's
`Spawner.cmd`: the launcher's bound socket handed over by socket activation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CHILD = """
import socket, sys
from gateway.job.launcher import exec_command
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(16)
s.setblocking(False)  # as the launcher leaves it
print(s.getsockname()[1], flush=True)
exec_command([sys.executable, "-m", "gateway.job.minimal_server"], ["--ignored=1"], s)
"""


class Recorder(BaseHTTPRequestHandler):
    posts: list[tuple[str, str, dict[str, Any]]] = []

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Recorder.posts.append((self.path, self.headers["Authorization"], body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_minimal_server_serves_the_handed_socket_reports_activity_and_stops_on_sigterm() -> None:
    hub = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=hub.serve_forever, daemon=True).start()
    env = {"PATH": os.environ["PATH"], "JUPYTERHUB_USER": "user07",
           "JUPYTERHUB_SERVICE_PREFIX": "/user/user07/s2/", "JUPYTERHUB_SERVER_NAME": "s2",
           "JUPYTERHUB_API_TOKEN": "t0ken",
           "JUPYTERHUB_ACTIVITY_URL": f"http://127.0.0.1:{hub.server_port}/hub/api/users/user07/activity"}
    # No JUPYTERHUB_SERVICE_URL: a server that binds its own port instead of the handed one fails.
    proc = subprocess.Popen([sys.executable, "-c", CHILD], env=env, stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        base = f"http://127.0.0.1:{port}/user/user07/s2"
        with urllib.request.urlopen(f"{base}/api", timeout=10) as resp:
            assert resp.status == 200 and json.loads(resp.read())["version"] == "minimal"
            assert resp.headers["X-JupyterHub-Version"]
        with urllib.request.urlopen(f"{base}/lab", timeout=10) as resp:
            assert b"no JupyterLab here" in resp.read()
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/user/bob/", timeout=10)
            raise AssertionError("a path outside the server's prefix was served")
        except urllib.error.HTTPError as err:
            assert err.code == 404
        deadline = time.monotonic() + 10
        while not Recorder.posts and time.monotonic() < deadline:
            time.sleep(0.05)
        [(path, auth, body)] = Recorder.posts
        assert path == "/hub/api/users/user07/activity" and auth == "token t0ken"
        assert body["servers"]["s2"]["last_activity"].endswith("Z")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        hub.shutdown()
