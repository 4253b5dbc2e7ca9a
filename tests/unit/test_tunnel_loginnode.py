"""Login-node mode's pure parts (the hub's ssh -L command line, the settings, the shared reader
and back-off) and its supervisor, with a stand-in for ssh that prints what ssh -v prints."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from gateway.policy.load import PolicyFileError, load_policy_text
from gateway.tunnel.hubside import TunnelConfigError
from gateway.tunnel.loginnode import (
    ForwardError,
    ForwardSupervisor,
    LoginNodeSettings,
    check_files,
    open_forward,
    settings_from,
)
from gateway.tunnel.sshargs import (
    Backoff,
    ForwardWatch,
    LoginNodeForward,
    login_node_argv,
)

SITES = Path(__file__).resolve().parents[2] / "site_configs"
SETTINGS = LoginNodeSettings(host="login1.example.org", port=2200, user="svc-hub",
                             key_file="/etc/hpcgate/login_key",
                             known_hosts="/etc/hpcgate/known_hosts", ports=(41000, 41999))


def option(argv: list[str], name: str) -> str | None:
    values = [argv[i + 1].split("=", 1)[1] for i, a in enumerate(argv)
              if a == "-o" and argv[i + 1].startswith(f"{name}=")]
    assert len(values) <= 1, (name, values)
    return values[0] if values else None


# -- the command line ---------------------------------------------------------------------------


def test_argv_forwards_one_loopback_port_to_the_node_through_the_login_node() -> None:
    argv = SETTINGS.argv(41234, "10.1.2.3", 35001)
    assert argv[0] == "ssh" and argv[-2:] == ["--", "login1.example.org"]
    assert argv.count("-L") == 1 and "-R" not in argv
    assert argv[argv.index("-L") + 1] == "127.0.0.1:41234:10.1.2.3:35001"
    assert argv[argv.index("-p") + 1] == "2200" and argv[argv.index("-l") + 1] == "svc-hub"
    assert "-N" in argv and "-T" in argv and argv[argv.index("-F") + 1] == "/dev/null"


def test_argv_is_batch_pinned_fast_and_secret_free() -> None:
    argv = SETTINGS.argv(41234, "10.1.2.3", 35001)
    assert option(argv, "BatchMode") == "yes"
    assert option(argv, "ExitOnForwardFailure") == "yes"
    assert option(argv, "ServerAliveInterval") == "5"
    assert option(argv, "Ciphers").startswith("aes128-gcm@openssh.com,")
    assert option(argv, "StrictHostKeyChecking") == "yes"
    assert option(argv, "UserKnownHostsFile") == "/etc/hpcgate/known_hosts"
    assert option(argv, "GlobalKnownHostsFile") == "/dev/null"
    # The login node's key is found under its own name in the site's file: no alias.
    assert option(argv, "HostKeyAlias") is None
    assert option(argv, "IdentityFile") == "/etc/hpcgate/login_key"
    assert option(argv, "IdentitiesOnly") == "yes" and option(argv, "ForwardAgent") == "no"
    assert not [a for a in argv if "PRIVATE" in a or "BEGIN" in a]


def test_argv_brackets_an_ipv6_node_address() -> None:
    forward = LoginNodeForward(login_host="login1", login_port=22, login_user="u", local_port=41000,
                               target_host="fd00::5", target_port=8888)
    argv = login_node_argv(forward, "/k", "/kh", ssh="/usr/bin/ssh")
    assert argv[0] == "/usr/bin/ssh"
    assert argv[argv.index("-L") + 1] == "127.0.0.1:41000:[fd00::5]:8888"


# -- the shared reader and back-off ---------------------------------------------------------------


def test_watch_is_up_only_when_its_own_port_listens() -> None:
    watch = ForwardWatch({("local-ok", 41234)})
    assert watch.feed("debug1: Authentication succeeded (publickey).") == ""
    assert watch.feed("debug1: Local forwarding listening on 127.0.0.1 port 40000.") == ""
    assert not watch.up
    assert watch.feed("debug1: Local forwarding listening on 127.0.0.1 port 41234.") == "up"
    assert watch.up
    assert watch.feed("debug1: Local forwarding listening on 127.0.0.1 port 41234.") == ""


def test_watch_keeps_what_matters() -> None:
    watch = ForwardWatch({("local-ok", 41234)})
    assert watch.feed("Permission denied (publickey).") == "said"
    assert watch.feed("bind [127.0.0.1]:41234: Address already in use") == "said"
    assert watch.feed("Host key verification failed.") == "said"
    assert not watch.up


def test_backoff_doubles_to_its_maximum_and_resets_after_a_stable_connection() -> None:
    backoff = Backoff(first=0.2, maximum=1.0, stable_after=30)
    assert [backoff.after_exit(False, 0.1) for _ in range(5)] == [0.2, 0.4, 0.8, 1.0, 1.0]
    assert backoff.after_exit(True, 31) == 0.2
    assert backoff.after_exit(False, 0.1) == 0.4


def test_a_connection_that_was_up_is_retried_at_once_even_if_it_was_up_briefly() -> None:
    # The hub's tunnel endpoint restarted twice within 30 s: the first restart's failed attempts
    # doubled the delay; the tunnel came back, and the second restart must not find it waiting.
    backoff = Backoff(first=0.2, maximum=30, stable_after=30)
    assert [backoff.after_exit(False, 0.1) for _ in range(6)] == [0.2, 0.4, 0.8, 1.6, 3.2, 6.4]
    assert backoff.after_exit(True, 5) == 0.2
    assert backoff.after_exit(False, 0.1) == 0.4


def test_a_server_that_drops_every_connection_at_once_is_not_hammered() -> None:
    backoff = Backoff(first=0.2, maximum=30, stable_after=30)
    waits = [backoff.after_exit(True, 0.5) for _ in range(8)]
    assert waits[:Backoff.brief_ups_forgiven] == [0.2] * Backoff.brief_ups_forgiven
    assert waits[-1] >= 3.2  # past the forgiven brief connections, doubling again


def test_brief_connections_are_forgiven_again_once_they_are_old() -> None:
    now = [1000.0]
    backoff = Backoff(first=0.2, maximum=30, stable_after=30, clock=lambda: now[0])
    assert [backoff.after_exit(True, 1) for _ in range(5)] == [0.2, 0.2, 0.2, 0.4, 0.8]
    now[0] += 31  # the brief connections are more than stable_after old
    assert backoff.after_exit(True, 1) == 0.2


# -- settings --------------------------------------------------------------------------------------


CONN = SimpleNamespace(ssh_host="login-policy", ssh_port=2222, login_node_user="svc",
                       login_node_key="/k", known_hosts="/kh", first_port=40000, last_port=40010,
                       ciphers=None)


def test_settings_come_from_the_policys_connection_section() -> None:
    s = settings_from(CONN)
    assert (s.host, s.port, s.user, s.key_file, s.known_hosts) == (
        "login-policy", 2222, "svc", "/k", "/kh")
    assert s.ports == (40000, 40010)
    assert s.ciphers.startswith("aes128-gcm@openssh.com")  # unset: the measured fastest first


def test_settings_name_what_is_missing() -> None:
    conn = SimpleNamespace(**{**CONN.__dict__, "login_node_user": None, "login_node_key": None})
    with pytest.raises(TunnelConfigError, match="needs login_node_user, login_node_key"):
        settings_from(conn)


def test_check_files_refuses_missing_and_open_keys(tmp_path: Path) -> None:
    key, known = tmp_path / "key", tmp_path / "known_hosts"
    known.write_text("[login]:22 ssh-ed25519 AAAA\n")
    settings = LoginNodeSettings(host="login", port=22, user="u", key_file=str(key),
                                 known_hosts=str(known), ports=(40000, 40001))
    with pytest.raises(TunnelConfigError, match="cannot read the login node key"):
        check_files(settings)
    key.write_text("not really a key\n")
    key.chmod(0o644)
    with pytest.raises(TunnelConfigError, match="readable by others"):
        check_files(settings)
    key.chmod(0o600)
    check_files(settings)


def demo_with_connection(lines: str) -> str:
    text = (SITES / "demo.yaml").read_text()
    start = text.index("connection:\n")
    end = text.index("\n\n", start)
    return text[:start] + "connection:\n" + lines + text[end:]


def test_policy_login_node_needs_its_account_key_and_host_key() -> None:
    with pytest.raises(PolicyFileError) as info:
        load_policy_text(demo_with_connection("  mode: login-node\n  ssh_host: login1\n"))
    text = "\n".join(str(p) for p in info.value.problems)
    for name in ("hub_api_url", "login_node_user", "login_node_key", "known_hosts"):
        assert f"connection.{name}: login-node mode needs {name}" in text, text


def test_policy_login_node_loads_and_refuses_a_relative_key() -> None:
    good = ("  mode: login-node\n  hub_api_url: http://10.0.0.1:8081/hub/api\n"
            "  ssh_host: login1\n  login_node_user: svc-hub\n"
            "  login_node_key: /etc/hpcgate/login_key\n  known_hosts: /etc/hpcgate/known_hosts\n")
    policy = load_policy_text(demo_with_connection(good))
    assert policy.connection.login_node_user == "svc-hub"
    assert policy.connection.login_node_key == "/etc/hpcgate/login_key"
    with pytest.raises(PolicyFileError, match="connection.login_node_key"):
        load_policy_text(demo_with_connection(good.replace("/etc/hpcgate/login_key", "key")))
    with pytest.raises(PolicyFileError, match="connection.login_node_user"):
        load_policy_text(demo_with_connection(good.replace("svc-hub", "svc hub; rm")))


# -- the supervisor, with a stand-in for ssh --------------------------------------------------------

FAKE_SSH = """
import os, sys, time
port, lifetime, pid_file = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
open(pid_file, "a").write(f"{os.getpid()}\\n")
print("debug1: Authentication succeeded (publickey).", file=sys.stderr, flush=True)
print(f"debug1: Local forwarding listening on 127.0.0.1 port {port}.", file=sys.stderr, flush=True)
time.sleep(lifetime)
"""


def fake(port: int, lifetime: float, pid_file: Path) -> list[str]:
    return [sys.executable, "-c", FAKE_SSH, str(port), str(lifetime), str(pid_file)]


def pids(pid_file: Path) -> list[int]:
    return [int(x) for x in pid_file.read_text().split()] if pid_file.exists() else []


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


async def test_up_after_confirmation_restarted_when_it_dies_and_stopped(tmp_path: Path) -> None:
    lines: list[str] = []
    pid_file = tmp_path / "pids"
    sup = ForwardSupervisor(fake(41234, 0.3, pid_file), 41234, lines.append,
                            Backoff(first=0.05, maximum=0.2)).start()
    try:
        await sup.wait_ready(10)
        deadline = time.monotonic() + 10
        while sup.connects < 3:
            assert time.monotonic() < deadline, lines
            await asyncio.sleep(0.02)
        assert any("reconnecting in" in x for x in lines)
        assert len(set(pids(pid_file))) >= 3
    finally:
        await sup.stop()
    assert not sup.up.is_set()
    assert not [p for p in pids(pid_file) if alive(p)]


async def test_stop_ends_a_running_ssh(tmp_path: Path) -> None:
    pid_file = tmp_path / "pids"
    sup = ForwardSupervisor(fake(41234, 60, pid_file), 41234, lambda _: None).start()
    await sup.wait_ready(10)
    [pid] = pids(pid_file)
    assert alive(pid)
    await sup.stop()
    assert not alive(pid)


async def test_not_up_when_another_port_listens(tmp_path: Path) -> None:
    sup = ForwardSupervisor(fake(40000, 60, tmp_path / "pids"), 41234, lambda _: None).start()
    try:
        with pytest.raises(ForwardError):
            await sup.wait_ready(0.7)
    finally:
        await sup.stop()


async def test_gives_up_with_what_ssh_said_and_leaves_nothing_running(tmp_path: Path) -> None:
    script = ("import sys; print('Permission denied (publickey).', file=sys.stderr); "
              "sys.exit(255)")
    sup = ForwardSupervisor([sys.executable, "-c", script], 41234, lambda _: None,
                            Backoff(first=0.01, maximum=0.02)).start()
    try:
        with pytest.raises(ForwardError, match=r"Permission denied \(publickey\)"):
            await sup.wait_ready(20, give_up_after=3)
    finally:
        await sup.stop()
    assert not sup.running


async def test_open_forward_stops_ssh_when_it_cannot_open(tmp_path: Path) -> None:
    settings = LoginNodeSettings(**{**SETTINGS.__dict__, "ssh": str(tmp_path / "no-such-ssh")})
    with pytest.raises(ForwardError, match="cannot run ssh"):
        await open_forward(settings, 41234, "10.0.0.9", 8888, log=lambda _: None, timeout=5)


HUB = """
import asyncio, sys
from gateway.tunnel.loginnode import ForwardSupervisor
async def main():
    sup = ForwardSupervisor(sys.argv[2:], int(sys.argv[1]), lambda _: None).start()
    await sup.wait_ready(10)
    print("up", flush=True)
    await asyncio.sleep(60)
asyncio.run(main())
"""


def test_ssh_dies_with_a_killed_hub(tmp_path: Path) -> None:
    pid_file = tmp_path / "pids"
    hub = subprocess.Popen([sys.executable, "-c", HUB, "41234", *fake(41234, 60, pid_file)],
                           stdout=subprocess.PIPE, text=True,
                           cwd=Path(__file__).resolve().parents[2])
    try:
        assert hub.stdout is not None and hub.stdout.readline().strip() == "up"
        [pid] = pids(pid_file)
        hub.send_signal(signal.SIGKILL)
        hub.wait()
        deadline = time.monotonic() + 5
        while alive(pid):
            assert time.monotonic() < deadline, "the ssh outlived the hub"
            time.sleep(0.05)
    finally:
        if hub.poll() is None:
            hub.kill()
            hub.wait()
        for pid in pids(pid_file):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_every_example_policy_loads_and_the_login_node_one_gives_its_forward() -> None:
    from gateway.policy.load import load_policy

    examples = sorted(SITES.glob("*.yaml"))
    modes = {load_policy(path).connection.mode for path in examples}
    assert modes == {"direct", "reverse", "login-node"}  # one example at least for each mode
    policy = load_policy(SITES / "login-node-slurm.yaml")
    s = settings_from(policy.connection)
    assert (s.host, s.port, s.user, s.key_file, s.known_hosts) == (
        "login2.cluster.example.org", 22, "hpcgate-fwd", "/etc/hpcgate/login_node_ed25519_key",
        "/etc/hpcgate/ssh_known_hosts")
