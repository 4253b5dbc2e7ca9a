"""gateway.job.files.TrackedFileHandler inside a real jupyter_server, over real sockets.

Large bodies leave by sendfile (the connection closes after them), small ones through tornado on a
keep-alive connection; both must give exact bytes, the right status and headers, keep the
server's checks (token, hidden files, paths outside the root) and survive a client that hangs up.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.lab.jupyter import NOBODY, jupyter_server

BIG = 3 * (1 << 20) + 12345  # above sendfile_min, not a multiple of any chunk size


@dataclass
class Server:
    port: int
    token: str
    root: Path
    log: Path
    data: bytes


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    # A real jupyter_server as nobody, started as the recorder's tests start theirs.
    with jupyter_server(["--ContentsManager.files_handler_class=gateway.job.files.TrackedFileHandler",
                         "--log-level=DEBUG"], recorder=False) as running:
        root = running.base / "root"
        data = secrets.token_bytes(BIG)
        (root / "song.wav").write_bytes(data)
        (root / "song.flac").write_bytes(data[:4096])
        (root / ".hidden.wav").write_bytes(data[:4096])
        with open(root / "sparse.wav", "wb") as f:
            f.truncate(256 << 20)
        for path in root.iterdir():
            os.chown(path, NOBODY, NOBODY)
        (root / "locked.wav").write_bytes(data)  # stays root's, mode 0600: the server cannot read it
        (root / "locked.wav").chmod(0o600)
        (running.base / "outside.wav").write_bytes(b"secret" * 1000)
        yield Server(running.port, running.token, root, running.log, data)


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


def send(sock: socket.socket, path: str, token: str | None, method: str = "GET",
         headers: str = "") -> None:
    auth = f"Authorization: token {token}\r\n" if token else ""
    sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}{headers}\r\n".encode())


def receive(sock: socket.socket, method: str = "GET") -> Response:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection before its headers"
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:])}
    length = 0 if method == "HEAD" else int(headers.get("content-length", "0"))
    parts = [body]
    got = len(body)
    while got < length:
        chunk = sock.recv(1 << 20)
        assert chunk, f"the body ended after {got} of {length} bytes"
        parts.append(chunk)
        got += len(chunk)
    return Response(int(lines[0].split()[1]), headers, b"".join(parts))


def get(server: Server, path: str, headers: str = "", method: str = "GET",
        token: str | None = "") -> Response:
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        send(sock, path, server.token if token == "" else token, method, headers)
        return receive(sock, method)


def closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(5)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_whole_large_file_goes_out_exact_and_closes_the_connection(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        send(sock, "/files/song.wav", server.token)
        r = receive(sock)
        assert r.status == 200
        assert r.headers["content-type"] == "audio/wav"
        assert r.headers["accept-ranges"] == "bytes"
        assert int(r.headers["content-length"]) == BIG
        assert r.headers["connection"].lower() == "close"
        assert r.body == server.data
        assert closed_by_server(sock)


def test_large_range_is_206_with_exact_bytes(server: Server) -> None:
    start, end = 1_000_001, 2_999_999
    r = get(server, "/files/song.wav", f"Range: bytes={start}-{end}\r\n")
    assert r.status == 206
    assert r.headers["content-range"] == f"bytes {start}-{end}/{BIG}"
    assert r.body == server.data[start:end + 1]


def test_open_ended_range_as_a_seeking_audio_element_asks(server: Server) -> None:
    start = BIG - (2 << 20) + 7
    r = get(server, "/files/song.wav", f"Range: bytes={start}-\r\n")
    assert r.status == 206
    assert r.body == server.data[start:]


def test_small_ranges_keep_the_connection(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        for start in (100, 2_500_000, BIG - 65536):
            send(sock, "/files/song.wav", server.token, headers=f"Range: bytes={start}-"
                                                               f"{start + 65535}\r\n")
            r = receive(sock)
            assert r.status == 206
            assert r.body == server.data[start:start + 65536]
            assert r.headers.get("connection", "").lower() != "close"


def test_suffix_range_head_and_unsatisfiable_range(server: Server) -> None:
    r = get(server, "/files/song.wav", "Range: bytes=-500\r\n")
    assert (r.status, r.body) == (206, server.data[-500:])
    r = get(server, "/files/song.wav", method="HEAD")
    assert r.status == 200 and int(r.headers["content-length"]) == BIG and r.body == b""
    r = get(server, "/files/song.wav", f"Range: bytes={BIG + 10}-\r\n")
    assert r.status == 416
    assert r.headers["content-range"] == f"bytes */{BIG}"


def test_audio_types(server: Server) -> None:
    assert get(server, "/files/song.flac").headers["content-type"] == "audio/flac"


def test_the_servers_checks_still_apply(server: Server) -> None:
    assert get(server, "/files/song.wav", token=None).status in (302, 403)
    assert get(server, "/files/song.wav", token="not-the-token").status in (302, 403)
    assert get(server, "/files/.hidden.wav").status == 404
    assert get(server, "/files/../outside.wav").status in (403, 404)
    assert get(server, "/files/%2e%2e/outside.wav").status in (403, 404)


def test_a_file_the_server_cannot_read_is_an_error_page_not_an_empty_200(server: Server) -> None:
    r = get(server, "/files/locked.wav")
    assert r.status == 403, (r.status, r.headers)
    assert get(server, "/files/song.wav", "Range: bytes=0-1048575\r\n").status == 206


def test_a_client_that_hangs_up_mid_file_leaves_the_server_serving(server: Server) -> None:
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            send(sock, "/files/sparse.wav", server.token)
            sock.recv(65536)  # headers and the first bytes, then hang up with the rest unread
        time.sleep(0.2)
    r = get(server, "/files/song.wav", "Range: bytes=5-1048580\r\n")
    assert r.status == 206 and r.body == server.data[5:1048581]
    log = server.log.read_text()
    assert "Traceback" not in log
    assert "sendfile of" in log and "stopped after" in log  # the hang-ups were seen as such


def test_a_download_counts_as_activity(server: Server) -> None:
    import json

    before = get(server, "/api/status").body
    time.sleep(1.1)
    assert get(server, "/files/song.wav").status == 200
    after = get(server, "/api/status").body
    assert json.loads(after)["last_activity"] > json.loads(before)["last_activity"]
