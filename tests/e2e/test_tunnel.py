"""Reverse mode through the real hub, proxy and Slurm: a server on c2 that listens only on c2's
loopback, reachable through the job's SSH tunnel and the proxy, and nothing else."""

from __future__ import annotations

import json
import os
import re
import signal
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.lab.hub import LabHub
from gateway.lab.procs import free_port
from gateway.lab.site import PINNED_NODES, with_changes
from tests.helpers.hub import Hub, fetch, job_log, running_hub, server_dir, tunnel_port, user_token
from tests.helpers.lab import as_user, workdir

WAV_SIZE = 2 * 1024**3


pytestmark = pytest.mark.lab


TUNNEL_POLICY = with_changes(PINNED_NODES, {"connection": {"mode": "reverse", "down_timeout": 8}})
TUNNEL_CONFIG = ('c.BatchSpawner.poll_interval = 2\n'
                 'c.BatchSpawner.environment = {"JUPYTERHUB_ACTIVITY_INTERVAL": "2"}\n')


@pytest.fixture(scope="module")
def tunnel_hub(lab: dict) -> Iterator[Hub]:
    with running_hub(lab, "tunnel", ("alice", "bob"), policy=TUNNEL_POLICY,
                     extra_config=TUNNEL_CONFIG) as h:
        yield h


def ssh_client_pids(user: str, lab: dict, hub: Hub | None = None) -> list[int]:
    """The user's job-side tunnel clients to this lab's endpoint (another lab on the machine,
    e.g. a benchmark's, has its own port). With `hub`: those of the user's running jobs only,
    and none may belong to a job that has ended (an ssh that outlived its job fails here)."""
    pattern = f"^ssh -N -T -F /dev/null .* -p {lab['tunnel']['port']} "
    out = subprocess.run(["pgrep", "-u", user, "-f", pattern],
                         capture_output=True, text=True).stdout
    pids = [int(p) for p in out.split()]
    if hub is None:
        return pids
    jobs = {str(j["job_id"]): j["job_state"] for j in hub.active_jobs(user)}
    running = {pid: _job_of(pid) for pid in pids}
    strays = {pid: job for pid, job in running.items() if job not in jobs}
    assert not strays, f"tunnel ssh clients of {user} whose job is not running: {strays} " \
                       f"(running: {jobs}): " + "; ".join(_cmdline(p) for p in strays)
    return [pid for pid, job in running.items() if jobs.get(job) == "RUNNING"]


def only_ssh_client(hub: Hub, user: str) -> int:
    """The one tunnel client of the user's running job."""
    pids = ssh_client_pids(user, hub.lab, hub)
    assert len(pids) == 1, [(p, _job_of(p), _cmdline(p)) for p in pids]
    return pids[0]


def _job_of(pid: int) -> str | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    found = [e.split(b"=", 1)[1].decode() for e in env if e.startswith(b"SLURM_JOB_ID=")]
    return found[0] if found else None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return f"{pid} (gone)"


def authorized_lines(lab: dict) -> list[str]:
    return Path(lab["tunnel"]["authorized_keys"]).read_text().splitlines()


@pytest.fixture(scope="module")
def alice_up(tunnel_hub: Hub):
    status, body = tunnel_hub.spawn("alice", {"partition": "long"})
    assert status in (201, 202), body
    tunnel_hub.wait_ready("alice", timeout=120)
    yield tunnel_hub
    if tunnel_hub.server("alice") is not None:
        tunnel_hub.stop("alice")


def test_server_on_c2_loopback_reachable_only_through_tunnel_and_proxy(alice_up: Hub) -> None:
    hub = alice_up
    port = tunnel_port(hub, "alice")
    lo, hi = 40000, 49999
    assert lo <= port <= hi
    [job] = hub.active_jobs("alice")
    assert job["batch_host"] == "c2"
    alice = user_token(hub, "alice")
    status, _, body = fetch(hub, "/user/alice/api/status", alice)
    assert status == 200 and "started" in json.loads(body)

    # The server listens on 127.0.0.1 inside c2's namespace, nowhere else.
    m = re.search(r"JupyterLab for alice on 127\.0\.0\.1:(\d+)", job_log(hub.lab, "alice"))
    assert m, job_log(hub.lab, "alice")
    server_port = int(m.group(1))
    ns = hub.lab["nodes"]["c2"]["namespace_path"]
    probe = ("import socket,sys\ntry:\n socket.create_connection((sys.argv[1], int(sys.argv[2])),"
             " timeout=2).close(); print('open')\nexcept OSError: print('closed')")
    inside = subprocess.run(["nsenter", f"--net={ns}", "python3", "-c", probe, "127.0.0.1",
                             str(server_port)], capture_output=True, text=True, timeout=10)
    assert inside.stdout.strip() == "open", inside.stderr
    c2_addr = hub.lab["nodes"]["c2"]["address"]
    outside = subprocess.run(["python3", "-c", probe, c2_addr, str(server_port)],
                             capture_output=True, text=True, timeout=10)
    assert outside.stdout.strip() == "closed"

    # bob, with his own valid token, cannot use alice's server.
    bob = user_token(hub, "bob")
    status, _, _ = fetch(hub, "/user/alice/api/status", bob)
    assert status == 403
    status, _, _ = fetch(hub, "/user/alice/api/contents", bob)
    assert status == 403

    # The tunnel's key line is there, confined to this port and the hub API.
    [line] = [x for x in authorized_lines(hub.lab) if f'permitlisten="127.0.0.1:{port}"' in x]
    assert line.startswith("restrict,port-forwarding,") and "hpcgate-job:alice-default-" in line
    # The private key is in no argv.
    for pid in ssh_client_pids("alice", hub.lab):
        assert "PRIVATE KEY" not in Path(f"/proc/{pid}/cmdline").read_text()


def test_the_hub_api_on_the_node_is_a_socket_only_the_jobs_user_can_open(alice_up: Hub) -> None:
    """Another user on the same node must not reach the hub through alice's tunnel: its end is a
    Unix socket in a 0700 directory of alice's, not a port on the node's loopback."""
    pid = only_ssh_client(alice_up, "alice")
    argv = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
    local = argv[argv.index("-L") + 1]
    path = Path(local.split(":", 1)[0])
    assert path.is_absolute() and path.is_socket(), local
    assert (path.parent.stat().st_mode & 0o777, path.stat().st_mode & 0o777) == (0o700, 0o600)
    assert path.parent.owner() == "alice"
    # Not among the TCP ports the node's loopback listens on.
    ns = alice_up.lab["nodes"]["c2"]["namespace_path"]
    listening = subprocess.run(["nsenter", f"--net={ns}", "ss", "-ltnpH"], capture_output=True,
                               text=True, timeout=10).stdout
    assert f"pid={pid}," not in listening, listening
    probe = "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\nprint('in')"
    bob = as_user(alice_up.lab, "bob", ["python3", "-c", probe, str(path)])
    assert bob.returncode != 0 and "PermissionError" in bob.stderr, (bob.stdout, bob.stderr)
    alice = as_user(alice_up.lab, "alice", ["python3", "-c", probe, str(path)])
    assert alice.stdout.strip() == "in", alice.stderr


def test_job_key_cannot_forward_another_port(alice_up: Hub, tmp_path: Path) -> None:
    hub = alice_up
    port = tunnel_port(hub, "alice")
    launch = json.loads((server_dir(hub.lab, "alice") / "launch.json").read_text())
    key = tmp_path / "key"
    key.write_text(launch["tunnel"]["private_key"])
    key.chmod(0o600)
    t = hub.lab["tunnel"]
    base = ["ssh", "-N", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
            "-i", str(key), "-o", f"UserKnownHostsFile={t['known_hosts']}",
            "-o", "ExitOnForwardFailure=yes", "-p", str(t["port"]), "-l", t["user"]]
    other = port + 1 if port < 49999 else port - 1
    # Another listening port on the hub host: refused.
    res = subprocess.run([*base, "-R", f"127.0.0.1:{other}:127.0.0.1:22", "127.0.0.1"],
                         capture_output=True, text=True, timeout=20)
    assert res.returncode != 0
    assert f"remote port forwarding failed for listen port {other}" in res.stderr
    # Opening anything but the hub API: refused by sshd.
    local = free_port()
    ssh = subprocess.Popen([*base, "-L", f"127.0.0.1:{local}:127.0.0.1:{t['port']}",
                            "-o", "ExitOnForwardFailure=yes", "127.0.0.1"],
                           stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while not port_open(local):
            assert time.monotonic() < deadline and ssh.poll() is None
            time.sleep(0.05)
        import socket

        with socket.create_connection(("127.0.0.1", local), timeout=5) as s:
            s.settimeout(5)
            assert s.recv(100) == b""  # closed at once: sshd refused the channel
    finally:
        ssh.terminate()
        _, err = ssh.communicate(timeout=10)
    assert "administratively prohibited" in err or "open failed" in err, err
    # No shell or command either.
    res = subprocess.run([*base[:1], *base[2:], "127.0.0.1", "id"], capture_output=True, text=True,
                         timeout=20)
    assert "uid=" not in res.stdout


def port_open(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def test_killing_ssh_restores_service_within_5s_and_kernel_survives(alice_up: Hub) -> None:
    hub = alice_up
    alice = user_token(hub, "alice")
    status, _, body = fetch(hub, "/user/alice/api/kernels", alice, method="POST", body=b"{}",
                            headers={"Content-Type": "application/json"}, timeout=60)
    assert status == 201, body
    kernel_id = json.loads(body)["id"]
    old = only_ssh_client(hub, "alice")
    os.kill(old, signal.SIGKILL)
    killed = time.monotonic()
    while True:
        elapsed = time.monotonic() - killed
        assert elapsed < 5, f"no service {elapsed:.1f} s after the ssh client was killed"
        try:
            status, _, body = fetch(hub, "/user/alice/api/kernels", alice, timeout=2)
        except OSError:
            status = 0
        if status == 200:
            break
        time.sleep(0.1)
    assert kernel_id in [k["id"] for k in json.loads(body)]
    new = only_ssh_client(hub, "alice")
    assert new != old
    assert "reconnecting in" in job_log(hub.lab, "alice")
    fetch(hub, f"/user/alice/api/kernels/{kernel_id}", alice, method="DELETE")


def make_wav(path: Path, size: int, marker_at: int, marker: bytes, tail: bytes = b"") -> None:
    """A real WAV header (16-bit stereo 48 kHz) for `size` bytes, sparse apart from the marker
    and the tail (the file's last bytes)."""
    data = size - 44
    header = (b"RIFF" + struct.pack("<I", min(size - 8, 0xFFFFFFFF)) + b"WAVEfmt "
              + struct.pack("<IHHIIHH", 16, 1, 2, 48000, 48000 * 4, 4, 16)
              + b"data" + struct.pack("<I", min(data, 0xFFFFFFFF)))
    with open(path, "wb") as f:
        f.write(header)
        f.seek(marker_at)
        f.write(marker)
        f.seek(size - len(tail))
        f.write(tail)
        f.truncate(size)


def test_range_into_the_middle_of_a_2gb_wav(alice_up: Hub) -> None:
    hub = alice_up
    alice = user_token(hub, "alice")
    home = workdir(hub.lab, "alice")  # the server's root
    wav, flac, mp3 = home / "field-2g.wav", home / "dawn.flac", home / "dusk.mp3"
    marker_at = WAV_SIZE // 2 + 12345
    marker = os.urandom(65536)
    tail = os.urandom(5 << 20)  # large enough to leave the server by sendfile
    try:
        make_wav(wav, WAV_SIZE, marker_at, marker, tail)
        flac.write_bytes(b"fLaC" + os.urandom(1000))
        mp3.write_bytes(b"ID3" + os.urandom(1000))
        for p in (wav, flac, mp3):
            os.chown(p, 5001, 5001)
        _, before = hub.api("GET", "/users/alice")
        time.sleep(1.1)
        asked = time.time()
        end = marker_at + len(marker) - 1
        status, headers, body = fetch(hub, "/user/alice/files/field-2g.wav", alice,
                                      headers={"Range": f"bytes={marker_at}-{end}"})
        assert status == 206, (status, headers, body[:300])
        assert headers["Content-Range"] == f"bytes {marker_at}-{end}/{WAV_SIZE}"
        assert headers["Accept-Ranges"] == "bytes"
        assert headers["Content-Type"] in ("audio/wav", "audio/x-wav")
        assert body == marker
        status, headers, body = fetch(hub, "/user/alice/files/field-2g.wav", alice,
                                      headers={"Range": "bytes=0-43"})
        assert status == 206 and body[:4] == b"RIFF" and body[8:12] == b"WAVE"
        # An audio element seeking near the end asks for everything from there on.
        status, headers, body = fetch(hub, "/user/alice/files/field-2g.wav", alice,
                                      headers={"Range": f"bytes={WAV_SIZE - len(tail)}-"})
        assert status == 206 and body == tail, (status, headers, len(body))
        for name, kind in (("dawn.flac", "audio/flac"), ("dusk.mp3", "audio/mpeg")):
            status, headers, body = fetch(hub, f"/user/alice/files/{name}", alice,
                                          headers={"Range": "bytes=0-3"})
            assert status == 206 and headers["Content-Type"] == kind, (name, headers)
        # The download counts as activity (the server reports it to the hub every 2 s here).
        deadline = time.monotonic() + 15
        while True:
            _, model = hub.api("GET", "/users/alice")
            last = model["servers"][""]["last_activity"]
            if last and last != before["servers"][""]["last_activity"] and \
                    _epoch(last) >= asked - 1:
                break
            assert time.monotonic() < deadline, (before["servers"][""], model["servers"][""])
            time.sleep(0.5)
    finally:
        for p in (wav, flac, mp3):
            p.unlink(missing_ok=True)


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_stop_removes_the_key_and_a_tunnel_that_stays_down_is_reported(tunnel_hub: Hub) -> None:
    hub = tunnel_hub
    assert hub.spawn("bob", {"partition": "debug"})[0] in (201, 202)
    hub.wait_ready("bob", timeout=120)
    assert hub.get("/user/bob/api")[0] == 200
    tags = [x for x in authorized_lines(hub.lab) if "hpcgate-job:bob-" in x]
    assert len(tags) == 1
    # Take the key away (as if the hub host's sshd no longer accepted it) and drop the tunnel:
    # the launcher cannot reconnect, and the hub must say so and stop the server, not hang.
    [job] = hub.active_jobs("bob")
    with tempfile.NamedTemporaryFile("w", dir=Path(hub.lab["tunnel"]["authorized_keys"]).parent,
                                     delete=False) as tmp:
        tmp.write("".join(f"{x}\n" for x in authorized_lines(hub.lab) if "hpcgate-job:bob-" not in x))
    os.chmod(tmp.name, 0o644)
    os.replace(tmp.name, hub.lab["tunnel"]["authorized_keys"])
    for pid in ssh_client_pids("bob", hub.lab):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 40
    while hub.server("bob") is not None:
        assert time.monotonic() < deadline, "the hub never noticed bob's tunnel stayed down"
        time.sleep(0.5)
    log = hub.hub.log.read_text()
    assert "The SSH tunnel of bob" in log and "treated as stopped" in log
    deadline = time.monotonic() + 20
    while [j for j in hub.active_jobs("bob") if j["job_id"] == job["job_id"]]:
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_a_hub_made_anew_on_its_state_like_a_restarted_demo_keeps_alice_working(alice_up: Hub) -> None:
    """`hpcgate demo` started again makes a new hub on the same state directory. alice's job
    keeps its tunnel and its forward to the hub API: the new hub must be where they point."""
    old = alice_up.hub
    old.kill()
    alice_up.hub = LabHub(old.info, old.dir, policy=TUNNEL_POLICY, extra_config=TUNNEL_CONFIG)
    alice_up.hub.start()
    token = user_token(alice_up, "alice")
    deadline = time.monotonic() + 60
    while True:  # the server checks the token with the hub API, through its own tunnel
        status, _, _ = fetch(alice_up, "/user/alice/api/contents", token)
        if status == 200:
            break
        assert time.monotonic() < deadline, f"alice's server answers {status} after the restart"
        time.sleep(0.5)
    assert alice_up.server("alice")["ready"]


def test_stop_removes_alice_key(alice_up: Hub) -> None:
    hub = alice_up
    assert [x for x in authorized_lines(hub.lab) if "hpcgate-job:alice-" in x]
    hub.stop("alice")
    assert not [x for x in authorized_lines(hub.lab) if "hpcgate-job:alice-" in x]
