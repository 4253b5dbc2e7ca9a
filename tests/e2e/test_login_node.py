"""Login-node mode through the real hub, proxy and Slurm: alice's server on c2 binds c2's address
and reports it as in direct mode; the hub reaches it with its own supervised `ssh -L` through the
lab's sshd (the "login node", which can reach c2), and the proxy routes to that forward's
loopback end."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.lab.site import PINNED_NODES, with_changes
from tests.helpers.hub import Hub, fetch, job_log, running_hub, tunnel_port, user_token

LOGIN_USER = "carol"  # the account the hub's forwards log in as on the login node


pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def login_hub(lab: dict) -> Iterator[Hub]:
    ssh = lab["ssh"]
    try:
        with running_hub(lab, "loginnode", ("alice", "bob"), policy=with_changes(PINNED_NODES, {
                "connection": {"mode": "login-node", "ssh_host": ssh["host"],
                               "ssh_port": ssh["port"], "known_hosts": ssh["known_hosts"],
                               "login_node_user": LOGIN_USER,
                               "login_node_key": ssh["user_keys"][LOGIN_USER]}}),
                extra_config='c.BatchSpawner.poll_interval = 2\n') as h:
            yield h
    finally:
        # The forwards die with the hub (PR_SET_PDEATHSIG); should one not, it is ended here.
        for pid in forward_pids(known_hosts=ssh["known_hosts"]):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def alice_up(login_hub: Hub):
    status, body = login_hub.spawn("alice", {"partition": "long"})
    assert status in (201, 202), body
    login_hub.wait_ready("alice", timeout=120)
    yield login_hub
    if login_hub.server("alice") is not None:
        login_hub.stop("alice")


def argv_of(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().split("\0")[:-1]
    except OSError:
        return []


def forward_pids(port: int | None = None, known_hosts: str | None = None) -> list[int]:
    """The hub's login-node forwards: ssh processes logging in as LOGIN_USER with a local forward
    from the hub host's loopback (any port, or `port`)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        argv = argv_of(int(entry.name))
        if not argv or Path(argv[0]).name != "ssh" or "-R" in argv or not {"-L", "-l"} <= set(argv):
            continue
        if argv[argv.index("-l") + 1] != LOGIN_USER or (
                known_hosts and f"UserKnownHostsFile={known_hosts}" not in argv):
            continue
        spec = argv[argv.index("-L") + 1]
        if spec.startswith("127.0.0.1:") and (port is None or spec.split(":")[1] == str(port)):
            found.append(int(entry.name))
    return found


def listeners(port: int) -> list[str]:
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True,
                         check=True).stdout
    return [line.split()[3] for line in out.splitlines() if line.strip()]


def server_address(lab: dict, user: str) -> tuple[str, int]:
    m = re.search(r"JupyterLab for \w+ on ([\d.]+):(\d+)", job_log(lab, user))
    assert m, job_log(lab, user)
    return m.group(1), int(m.group(2))


def wait_served(hub: Hub, token: str, within: float) -> float:
    start = time.monotonic()
    while True:
        elapsed = time.monotonic() - start
        assert elapsed < within, f"no service {elapsed:.1f} s"
        try:
            status, _, _ = fetch(hub, "/user/alice/api/status", token, timeout=2)
        except OSError:
            status = 0
        if status == 200:
            return elapsed
        time.sleep(0.1)


def test_server_on_c2_reached_through_the_hubs_forward(alice_up: Hub) -> None:
    hub = alice_up
    [job] = hub.active_jobs("alice")
    assert job["batch_host"] == "c2"
    alice = user_token(hub, "alice")
    status, _, body = fetch(hub, "/user/alice/api", alice)
    assert status == 200 and "version" in json.loads(body)
    status, _, body = fetch(hub, "/user/alice/api/status", alice)
    assert status == 200 and "started" in json.loads(body)

    # The server binds c2's own address (as in direct mode); the proxy routes to 127.0.0.1:P.
    node, server_port = server_address(hub.lab, "alice")
    assert node == hub.lab["nodes"]["c2"]["address"]
    port = tunnel_port(hub, "alice")
    assert 40000 <= port <= 49999

    # P is the hub's ssh forward through the login node to exactly that address, on loopback only.
    [pid] = forward_pids(port)
    argv = argv_of(pid)
    assert argv[argv.index("-L") + 1] == f"127.0.0.1:{port}:{node}:{server_port}"
    assert argv[argv.index("-l") + 1] == LOGIN_USER
    assert argv[-2:] == ["--", hub.lab["ssh"]["host"]]
    assert (hub.hub.dir / "login_node_ed25519").read_bytes() == \
        Path(hub.lab["ssh"]["user_keys"][LOGIN_USER]).read_bytes()
    for opt in ("ExitOnForwardFailure=yes", "BatchMode=yes", "StrictHostKeyChecking=yes",
                # The hub account's own copy of the lab's key (LabHub), as a site gives it one.
                f"IdentityFile={hub.hub.dir / 'login_node_ed25519'}",
                f"UserKnownHostsFile={hub.lab['ssh']['known_hosts']}"):
        assert opt in argv, (opt, argv)
    assert any(a.startswith("ServerAliveInterval=") for a in argv)
    assert any(a.startswith("Ciphers=aes128-gcm@openssh.com") for a in argv)
    assert not [a for a in argv if "PRIVATE KEY" in a]
    assert int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) == \
        hub.hub.proc.pid  # a child of the hub
    assert listeners(port) == [f"127.0.0.1:{port}"]

    # bob, with his own valid token, cannot use alice's server.
    bob = user_token(hub, "bob")
    for path in ("/user/alice/api/status", "/user/alice/api/contents"):
        status, _, _ = fetch(hub, path, bob)
        assert status == 403


def test_killing_the_hubs_ssh_restores_service_within_5s(alice_up: Hub) -> None:
    hub = alice_up
    alice = user_token(hub, "alice")
    port = tunnel_port(hub, "alice")
    [old] = forward_pids(port)
    os.kill(old, signal.SIGKILL)
    wait_served(hub, alice, within=5)
    [new] = forward_pids(port)
    assert new != old
    assert "reconnecting in" in hub.hub.log.read_text()
    assert tunnel_port(hub, "alice") == port


def test_hub_restart_readopts_the_server_with_a_new_forward_on_the_same_port(alice_up: Hub) -> None:
    hub = alice_up
    port = tunnel_port(hub, "alice")
    [old] = forward_pids(port)
    [job] = hub.active_jobs("alice")
    hub.hub.kill()
    deadline = time.monotonic() + 5
    while forward_pids(port):  # the ssh dies with the hub (no orphan holding P)
        assert time.monotonic() < deadline, "the hub's ssh outlived the hub"
        time.sleep(0.05)
    hub.hub.start()
    alice = user_token(hub, "alice")
    wait_served(hub, alice, within=30)
    [new] = forward_pids(port)
    assert new != old
    assert tunnel_port(hub, "alice") == port
    assert [j["job_id"] for j in hub.active_jobs("alice")] == [job["job_id"]]


def test_stop_leaves_no_ssh_behind(alice_up: Hub) -> None:
    hub = alice_up
    port = tunnel_port(hub, "alice")
    assert forward_pids(port)
    [job] = hub.active_jobs("alice")
    hub.stop("alice")
    assert forward_pids(port) == []
    assert listeners(port) == []
    deadline = time.monotonic() + 20
    while [j for j in hub.active_jobs("alice") if j["job_id"] == job["job_id"]]:
        assert time.monotonic() < deadline
        time.sleep(0.2)
