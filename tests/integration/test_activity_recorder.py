"""The activity recorder inside a real jupyter_server (as nobody, on loopback, no lab needed):
kernels driven over the websocket as JupyterLab does, and from a second client on a kernel made
through REST; every execution and kernel event recorded, then delivered to a stand-in for the
hub's API (over its Unix socket, as in reverse-tunnel mode) that is away at first."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp import web

from gateway.job.activity.records import parse_iso, problems
from gateway.job.files import HANDLER as FILES_HANDLER
from gateway.lab.jupyter import NOBODY, V1, KernelClient, Server, jupyter_server

HUB_TOKEN = "server-token-1234"


class StandInHub:
    """POST /hub/api/hpcgate/activity on a Unix socket, checking the server's token."""

    def __init__(self, path: Path):
        self.path, self.received, self.posts = path, [], 0
        self.loop = asyncio.new_event_loop()
        self.runner: web.AppRunner | None = None
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    async def _post(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"token {HUB_TOKEN}":
            return web.json_response({"message": "bad token"}, status=403)
        records = (await request.json())["records"]
        self.posts += 1
        self.received.extend(records)
        return web.json_response({"stored": [r["id"] for r in records], "rejected": []})

    def up(self) -> None:
        async def start() -> None:
            app = web.Application()
            app.router.add_post("/hub/api/hpcgate/activity", self._post)
            self.runner = web.AppRunner(app)
            await self.runner.setup()
            await web.UnixSite(self.runner, str(self.path)).start()
            os.chmod(self.path, 0o666)  # noqa: S103 - nobody (the server) connects to it
        asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)

    def close(self) -> None:
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandInHub]:
    sockdir = Path("/var/tmp") / f"hpcgate-hubsock-{os.getpid()}"
    sockdir.mkdir(mode=0o755, exist_ok=True)
    stand_in = StandInHub(sockdir / "api.sock")
    yield stand_in
    stand_in.close()
    (sockdir / "api.sock").unlink(missing_ok=True)
    sockdir.rmdir()


@pytest.fixture(scope="module")
def server(hub: StandInHub) -> Iterator[Server]:
    env = {"JUPYTERHUB_API_URL": f"http+unix://{quote(str(hub.path), safe='')}/hub/api",
           "JUPYTERHUB_API_TOKEN": HUB_TOKEN, "JUPYTERHUB_USER": "alice", "SLURM_JOB_ID": "4242"}
    with jupyter_server(["--ActivityRecorder.max_delay=1"], env) as srv:
        yield srv


def executions(srv: Server, msg_id: str) -> dict[str, Any]:
    found = srv.wait_for(lambda r: r["kind"] == "execution" and r["msg_id"] == msg_id)
    assert len(found) == 1, f"{len(found)} records for {msg_id}"
    rec = found[0]
    assert problems(rec) == []
    times = [parse_iso(rec[k]) for k in ("requested", "started", "ended") if rec[k]]
    assert times == sorted(times), rec
    return rec


def kernel_events(srv: Server, kind: str, kernel_id: str, n: int = 1) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 20
    while True:
        found = [r for r in srv.records() if r["kind"] == kind and r.get("kernel_id") == kernel_id]
        if len(found) >= n or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_a_notebook_over_the_websocket_as_jupyterlab(server: Server) -> None:
    session = server.api("POST", "/api/sessions", {"path": "study.ipynb", "type": "notebook",
                                                   "name": "study.ipynb", "kernel": {"name": "python3"}})
    kid = session["kernel"]["id"]
    lab = KernelClient(server, kid, V1)
    ok = executions(server, lab.execute("print('x' * 100)", cell_id="cell-ok"))
    err = executions(server, lab.execute("1/0", cell_id="cell-err"))
    lab.close()
    assert ok["outcome"] == "ok" and ok["ename"] is None and ok["cell_id"] == "cell-ok"
    assert ok["language"] == "python" and ok["kernel_name"] == "python3"
    assert ok["session_path"] == "study.ipynb" and ok["client"] == "websocket"
    assert ok["user"] == "alice" and ok["job_id"] == "4242" and ok["execution_count"] == 1
    assert ok["code"]["kept"] == "hash" and "text" not in ok["code"] and ok["code"]["lines"] == 1
    assert ok["code_bytes"] == len("print('x' * 100)") and ok["output_bytes"] > 100, json.dumps(ok)
    assert err["outcome"] == "error" and err["ename"] == "ZeroDivisionError"
    assert err["execution_count"] == 2 and parse_iso(err["requested"]) >= parse_iso(ok["ended"])
    assert kernel_events(server, "kernel_start", kid)
    assert (server.state / "activity.jsonl").stat().st_mode & 0o777 == 0o600
    assert (server.state / "activity.jsonl").stat().st_uid == NOBODY


def test_interrupt_restart_and_a_killed_kernel(server: Server) -> None:
    kid = server.api("POST", "/api/kernels", {"name": "python3"})["id"]
    client = KernelClient(server, kid, None)  # a second kind of client: REST kernel, JSON protocol
    pid_id = client.execute("import os, time")
    pid = _kernel_pid(client)
    long = client.execute("time.sleep(30)", wait=False)
    client.wait(long, "busy")
    time.sleep(0.5)  # into the sleep: a SIGINT before the cell runs may be lost by the kernel
    server.api("POST", f"/api/kernels/{kid}/interrupt")
    client.wait(long)
    interrupted = executions(server, long)
    assert interrupted["interrupted"] is True and interrupted["ename"] == "KeyboardInterrupt"
    assert interrupted["outcome"] == "error" and interrupted["client"] == "websocket"
    assert executions(server, pid_id)["session_path"] is None  # a kernel without a session
    assert kernel_events(server, "kernel_interrupt", kid)

    server.api("POST", f"/api/kernels/{kid}/restart")
    assert kernel_events(server, "kernel_restart", kid)[0]["reason"] == "user"
    # As JupyterLab does after a restart: a new websocket, which the server lets through once the
    # new kernel's IOPub answers (the old connection's may miss the first messages).
    client.close()
    client = KernelClient(server, kid, None)

    new_pid = _kernel_pid(client)
    assert new_pid != pid
    doomed = client.execute("import time; time.sleep(30)", wait=False)
    client.wait(doomed, "busy")
    os.kill(new_pid, signal.SIGKILL)
    died = kernel_events(server, "kernel_died", kid)
    assert died, "no kernel_died record"
    unfinished = executions(server, doomed)
    assert unfinished["outcome"] == "unfinished" and unfinished["ended"] is None
    assert [r["reason"] for r in kernel_events(server, "kernel_restart", kid, 2)] == ["user", "died"]
    client.close()
    server.api("DELETE", f"/api/kernels/{kid}")
    assert kernel_events(server, "kernel_shutdown", kid)


def _kernel_pid(client: KernelClient) -> int:
    """The kernel's own process id, checked to be the server's account's (never ours)."""
    pid = int(client.output_of("import os; print(os.getpid())"))
    assert os.stat(f"/proc/{pid}").st_uid == NOBODY
    return pid


def test_a_bash_kernel_is_recorded_with_its_language(server: Server) -> None:
    kid = server.api("POST", "/api/kernels", {"name": "bash"})["id"]
    client = KernelClient(server, kid, V1)
    rec = executions(server, client.execute("echo hello; false", cell_id="b1"))
    client.close()
    server.api("DELETE", f"/api/kernels/{kid}")
    assert rec["language"] == "bash" and rec["kernel_name"] == "bash" and rec["cell_id"] == "b1"
    assert rec["output_bytes"] > 0 and rec["outcome"] in ("ok", "error")


def test_iopub_is_read_once_whichever_clients_come_and_go(server: Server) -> None:
    """The recorder reads a kernel's IOPub from one websocket while any is connected, else from
    a socket of its own: two tabs, the first closed, the second closed, then a client on the
    kernel's own ports. Every execution is recorded once, with its timing and output."""
    from jupyter_client import BlockingKernelClient

    kid = server.api("POST", "/api/kernels", {"name": "python3"})["id"]
    direct = BlockingKernelClient(connection_file=str(server.base / "rt" / f"kernel-{kid}.json"))
    direct.load_connection_file()
    # IOPub's subscribers: jupyter_server's own activity watch, each tab's, the recorder's.
    assert _subscribers(direct.iopub_port, 2)  # the watch and the recorder's own
    first_tab = KernelClient(server, kid, V1)
    ids = [first_tab.execute("x = 1; print(x)")]
    assert _subscribers(direct.iopub_port, 2)  # the tab's instead of the recorder's
    second_tab = KernelClient(server, kid, V1)
    ids.append(second_tab.execute("x += 1; print(x)"))  # the first tab's IOPub is read
    assert _subscribers(direct.iopub_port, 3)
    first_tab.close()
    ids.append(second_tab.execute("x += 1; print(x)"))  # the second tab's, once it forwards
    second_tab.close()
    # The recorder's own socket is back (jupyter_server may keep a closed tab's sockets a while,
    # buffering for its return: the count says nothing here).
    time.sleep(0.5)
    direct.start_channels()
    try:
        ids.append(direct.execute("x += 1; print(x)"))
        assert direct.get_shell_msg(timeout=30)["content"]["status"] == "ok"
    finally:
        direct.stop_channels()
    records = [executions(server, msg_id) for msg_id in ids]  # each exactly once
    assert [r["execution_count"] for r in records] == [1, 2, 3, 4]
    assert [r["client"] for r in records] == ["websocket"] * 3 + ["kernel"]
    for rec in records:
        assert rec["outcome"] == "ok" and rec["started"] and rec["ended"], rec
        assert rec["output_bytes"] > 0, rec
    server.api("DELETE", f"/api/kernels/{kid}")


def _subscribers(port: int, expected: int, timeout: float = 10) -> bool:
    """Whether the connections to a kernel's IOPub port come to `expected` (and stay a moment)."""
    def count() -> int:
        out = subprocess.run(["ss", "-Htn", "state", "established", f"( sport = :{port} )"],
                             capture_output=True, text=True, check=True).stdout
        return len(out.splitlines())

    deadline, seen = time.monotonic() + timeout, -1
    while time.monotonic() < deadline:
        seen = count()
        if seen == expected:
            time.sleep(0.3)
            if count() == expected:
                return True
        time.sleep(0.05)
    raise AssertionError(f"{seen} connections to IOPub port {port}, not {expected}")


def test_records_reach_the_hub_once_it_is_back(server: Server, hub: StandInHub) -> None:
    assert hub.received == []  # away so far: the buffer holds everything
    time.sleep(1.5)  # at least one more refused try
    hub.up()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(hub.received) < len(server.records()):
        time.sleep(0.1)
    written = server.records()
    ids = [r["id"] for r in hub.received]
    assert len(ids) == len(set(ids)) == len(written)
    assert set(ids) == {r["id"] for r in written}
    server.stop()  # SIGTERM: the stop record, delivered before the server exits
    stop = [r for r in hub.received if r["kind"] == "server_stop"]
    assert stop and stop[0]["reason"] == "signal SIGTERM"
    assert json.loads((server.state / "activity.delivered").read_text())["offset"] == \
        (server.state / "activity.jsonl").stat().st_size


MiB = 1 << 20


def _get(srv: Server, path: str, headers: dict[str, str] | None = None,
         method: str = "GET") -> tuple[int, int]:
    """Status and body length of a whole /files/ request (HTTP/1.1: the sendfile path)."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
    try:
        conn.request(method, f"/files/{path}",
                     headers={"Authorization": f"token {srv.token}", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, len(resp.read())
    finally:
        conn.close()


def _raw(srv: Server, request: bytes, keep: int) -> int:
    """Send a raw request, read `keep` bytes of the answer, hang up; the bytes read."""
    got = 0
    with socket.create_connection(("127.0.0.1", srv.port), timeout=60) as sock:
        sock.sendall(request)
        while got < keep:
            chunk = sock.recv(min(1 << 16, keep - got))
            if not chunk:
                break
            got += len(chunk)
    return got


def test_large_downloads_through_files_are_recorded_with_path_and_bytes() -> None:
    args = [f"--ContentsManager.files_handler_class={FILES_HANDLER}",
            f"--ActivityRecorder.download_min={MiB}"]
    with jupyter_server(args) as srv:
        root = srv.base / "root"
        (root / "site A").mkdir()
        os.truncate(_made(root / "site A" / "dawn.wav"), 12 * MiB)
        os.truncate(_made(root / "long.flac"), 256 * MiB)
        os.truncate(_made(root / "small.txt"), 2 * MiB)

        assert _get(srv, "site%20A/dawn.wav") == (200, 12 * MiB)
        assert _get(srv, "site%20A/dawn.wav", {"Range": f"bytes={4 * MiB}-"}) == (206, 8 * MiB)
        assert _get(srv, "site%20A/dawn.wav", {"Range": "bytes=0-524287"}) == (206, MiB // 2)
        assert _get(srv, "site%20A/dawn.wav", method="HEAD")[0] == 200
        # HTTP/1.0 keeps tornado's own chunked path (no sendfile): counted there too.
        request = (f"GET /files/small.txt HTTP/1.0\r\nAuthorization: token {srv.token}\r\n\r\n")
        assert _raw(srv, request.encode(), 3 * MiB) > 2 * MiB
        # A player that seeks away: the client hangs up after 2 MiB of a 256 MiB file.
        request = (f"GET /files/long.flac HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\nRange: bytes={MiB}-\r\n"
                   f"Authorization: token {srv.token}\r\n\r\n")
        assert _raw(srv, request.encode(), 2 * MiB) == 2 * MiB

        found = srv.wait_for(lambda r: r["kind"] == "download" and r["path"] == "long.flac")
        downloads = [r for r in srv.records() if r["kind"] == "download"]
        assert all(problems(r) == [] for r in downloads)
        seen = [(r["path"], r["bytes"], r["range_start"], r["file_bytes"]) for r in downloads]
        assert seen[:3] == [("site A/dawn.wav", 12 * MiB, 0, 12 * MiB),
                            ("site A/dawn.wav", 8 * MiB, 4 * MiB, 12 * MiB),
                            ("small.txt", 2 * MiB, 0, 2 * MiB)], seen  # not the 512 KiB nor HEAD
        cut = found[0]
        assert cut["range_start"] == MiB and cut["file_bytes"] == 256 * MiB
        assert 2 * MiB - 4096 <= cut["bytes"] < 255 * MiB, cut  # what left before the hang-up
        assert len(downloads) == 4, seen


def _made(path: Path) -> Path:
    path.touch()
    return path

