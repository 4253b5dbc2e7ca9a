"""A real Jupyter server on loopback as nobody (with or without the activity recorder), and kernel
clients that speak to it as JupyterLab does: REST for sessions and kernels, the kernel websocket
for messages (the v1 binary protocol JupyterLab uses, or the JSON one older clients use). For the
recorder's tests and benchmark."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import websocket
from jupyter_server.services.kernels.connection.base import (
    deserialize_msg_from_ws_v1,
    serialize_msg_to_ws_v1,
)

from gateway.lab.procs import free_port

REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534  # the server runs as an ordinary account, as in a job
V1 = "v1.kernel.websocket.jupyter.org"


@dataclass
class Server:
    port: int
    token: str
    base: Path
    state: Path
    log: Path
    proc: subprocess.Popen[bytes]

    def api(self, method: str, path: str, body: Any = None) -> Any:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310 - loopback
            return json.loads(resp.read() or b"null")

    def records(self) -> list[dict[str, Any]]:
        path = self.state / "activity.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def wait_for(self, pred: Any, timeout: float = 20) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            found = [r for r in self.records() if pred(r)]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM (the server stops its kernels); SIGKILL to its whole session after 20 s."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: start_new_session
                self.proc.wait()


@contextmanager
def jupyter_server(args: list[str] = (), env: dict[str, str] | None = None,
                   recorder: bool = True) -> Iterator[Server]:
    """A real `jupyter server` as nobody, in a temporary directory under /var/tmp."""
    base = Path(tempfile.mkdtemp(prefix="hpcgate-activity-", dir="/var/tmp"))
    base.chmod(0o755)
    for sub in ("root", "cfg", "rt", "data", "state"):
        (base / sub).mkdir()
        os.chown(base / sub, NOBODY, NOBODY)
    port, token = free_port(), uuid.uuid4().hex
    log = base / "server.log"
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(base),
                "PYTHONPATH": str(REPO), "JUPYTER_TOKEN": token,
                "JUPYTER_CONFIG_DIR": str(base / "cfg"), "JUPYTER_RUNTIME_DIR": str(base / "rt"),
                "JUPYTER_DATA_DIR": str(base / "data"), **(env or {})}
    extension = (["--ServerApp.jpserver_extensions={'gateway.job.activity': True}",
                  f"--ActivityRecorder.state_dir={base / 'state'}"] if recorder else [])
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
             sys.executable, "-m", "jupyter_server", "--no-browser", "--ServerApp.ip=127.0.0.1",
             f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
             f"--ServerApp.root_dir={base / 'root'}", *extension, *args],
            cwd=base, env=full_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(port, token, base, base / "state", log, proc)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"jupyter_server did not start:\n{log.read_text()[-3000:]}") from None
                time.sleep(0.1)
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


class KernelClient:
    """One websocket to one kernel, as a frontend holds it."""

    def __init__(self, server: Server, kernel_id: str, protocol: str | None = V1):
        self.protocol = protocol
        self.session = uuid.uuid4().hex
        self.ws = websocket.create_connection(
            f"ws://127.0.0.1:{server.port}/api/kernels/{kernel_id}/channels?session_id={self.session}",
            header=[f"Authorization: token {server.token}"], timeout=60,
            subprotocols=[protocol] if protocol else None,
            sockopt=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])  # as browsers: no Nagle wait

    def send(self, msg_type: str, content: dict[str, Any], metadata: dict[str, Any] | None = None,
             channel: str = "shell") -> str:
        msg_id = uuid.uuid4().hex
        header = {"msg_id": msg_id, "msg_type": msg_type, "username": "", "session": self.session,
                  "date": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime()), "version": "5.3"}
        if self.protocol == V1:
            parts = [json.dumps(x).encode() for x in (header, {}, metadata or {}, content)]
            self.ws.send_binary(serialize_msg_to_ws_v1(parts, channel))
        else:
            self.ws.send(json.dumps({"header": header, "parent_header": {}, "metadata": metadata or {},
                                     "content": content, "channel": channel, "buffers": []}))
        return msg_id

    def receive(self) -> dict[str, Any]:
        # The server's kernel websocket leaves Nagle on: without an immediate ACK from here its
        # second small frame waits for Linux's delayed ACK (40 ms) and would hide any overhead.
        self.ws.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        data = self.ws.recv()
        if isinstance(data, bytes):
            channel, parts = deserialize_msg_from_ws_v1(data)
            msg = {k: json.loads(p) for k, p in zip(("header", "parent_header", "metadata", "content"),
                                                     parts, strict=False)}
            msg["channel"] = channel
            return msg
        return json.loads(data)

    def execute(self, code: str, cell_id: str | None = None, wait: bool = True) -> str:
        """Send an execute_request as JupyterLab does; with `wait`, until the reply and idle."""
        meta = {"deletedCells": [], "recordTiming": False, **({"cellId": cell_id} if cell_id else {})}
        msg_id = self.send("execute_request", {"code": code, "silent": False, "store_history": True,
                                               "user_expressions": {}, "allow_stdin": False,
                                               "stop_on_error": True}, meta)
        if wait:
            self.wait(msg_id)
        return msg_id

    def output_of(self, code: str) -> str:
        """Run `code` and return what it printed (stdout)."""
        msg_id, text, reply, idle = self.execute(code, wait=False), [], None, False
        deadline = time.monotonic() + 60
        while reply is None or not idle:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no reply and idle for {code!r}")
            msg = self.receive()
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = msg["header"]["msg_type"]
            if kind == "stream" and msg["content"].get("name") == "stdout":
                text.append(msg["content"]["text"])
            reply = msg["content"] if kind == "execute_reply" else reply
            idle = idle or (kind == "status" and msg["content"]["execution_state"] == "idle")
        return "".join(text)

    def wait(self, msg_id: str, state: str = "idle", timeout: float = 60) -> dict[str, Any]:
        """Messages until the kernel's status `state` for `msg_id` (and its reply, for idle)."""
        deadline, reply, seen = time.monotonic() + timeout, None, False
        while time.monotonic() < deadline:
            msg = self.receive()
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if msg["header"]["msg_type"] == "execute_reply":
                reply = msg["content"]
            elif msg["header"]["msg_type"] == "status":
                seen = seen or msg["content"]["execution_state"] == state
            if seen and (state != "idle" or reply is not None):  # reply and idle: either order
                return reply or {}
        raise TimeoutError(f"no {state} for {msg_id}")

    def close(self) -> None:
        self.ws.close()
