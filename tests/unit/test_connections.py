"""Connection modes as objects: the factory, their state across hub restarts, what each accepts
as a server's report, and a tunnel that stays down."""

from __future__ import annotations

import ast
import asyncio
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
from jupyterhub.spawner import SpawnException
from tornado import web

from gateway.hub.connections import (
    ConnectionMode,
    LoginNodeMode,
    ReverseMode,
    connection_from_state,
    make_connection,
)
from gateway.tunnel import hubside

ROOT = Path(__file__).resolve().parents[2]
API = "http://127.0.0.1:8081/hub/api"


def section(**changes: object) -> SimpleNamespace:
    base = dict(mode="direct", hub_api_url=None, ssh_host=None, ssh_port=22, known_hosts=None,
                login_node_user=None, login_node_key=None, tunnel_user="hpcgate-tunnel",
                authorized_keys=None, first_port=40000, last_port=49999, ciphers=None,
                down_timeout=120.0)
    return SimpleNamespace(**{**base, **changes})


def test_the_factory_makes_the_policys_mode() -> None:
    assert type(make_connection("a", section(), API)) is ConnectionMode
    reverse = make_connection("a", section(mode="reverse", down_timeout=8), API)
    assert isinstance(reverse, ReverseMode) and reverse.down_timeout == 8
    assert isinstance(make_connection("a", section(mode="login-node"), API), LoginNodeMode)


def test_state_survives_a_hub_restart_and_the_port_stays_claimed() -> None:
    reverse = ReverseMode("alice", section(mode="reverse"))
    reverse.port, reverse.tag, reverse.keys_file = 41234, "hpcgate-job:alice-x", "/etc/keys"
    saved = reverse.save()
    hubside.unclaim(41234)
    back = connection_from_state("alice", saved, section(mode="direct"))  # the policy changed since
    assert isinstance(back, ReverseMode)  # a running server keeps the mode it started with
    assert (back.port, back.tag, back.keys_file) == (41234, "hpcgate-job:alice-x", "/etc/keys")
    assert 41234 in hubside._claimed
    hubside.unclaim(41234)
    login = connection_from_state("bob", {"connect": "login-node", "tunnel_port": 41235})
    assert isinstance(login, LoginNodeMode) and login.port == 41235
    hubside.unclaim(41235)
    assert type(connection_from_state("carol", {"connect": "direct"})) is ConnectionMode


def test_what_each_mode_accepts_as_the_servers_address() -> None:
    direct = ConnectionMode("alice")
    direct.check_report("10.0.0.5", 5000, "10.0.0.5")
    with pytest.raises(web.HTTPError):
        direct.check_report("10.0.0.6", 5000, "10.0.0.5")  # not its node: another user's route
    reverse = ReverseMode("alice")
    reverse.port = 41000
    reverse.check_report("127.0.0.1", 41000, None)
    for host, port in (("127.0.0.1", 41001), ("10.0.0.5", 41000)):
        with pytest.raises(web.HTTPError):
            reverse.check_report(host, port, "10.0.0.5")
    assert ConnectionMode.checks_node_address and not ReverseMode.checks_node_address


async def test_reverse_mode_without_its_settings_is_a_sentence() -> None:
    mode = make_connection("alice", section(mode="reverse", ssh_host="hub"), API)
    with pytest.raises(SpawnException) as err:
        await mode.prepare("alice", "", lambda: None)
    said = err.value.message  # what the user reads; the log gets the details
    assert "not fully configured" in said and "administrator" in said
    assert "authorized_keys" in str(err.value)


async def test_a_tunnel_down_longer_than_its_timeout_ends_the_server() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mode = ReverseMode("alice", down_timeout=0.2)
    mode.port = port
    assert await mode.is_alive()  # down, but not for long yet
    await asyncio.sleep(0.25)
    assert not await mode.is_alive()
    never = ReverseMode("bob", down_timeout=0)  # 0: never given up
    never.port = port
    assert await never.is_alive()


def test_no_branch_on_the_modes_name_outside_the_factory() -> None:
    names = {"direct", "reverse", "login-node"}
    for path in (ROOT / "gateway" / "hub").glob("*.py"):
        if path.name == "connections.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                consts = [c.value for c in [node.left, *node.comparators]
                          if isinstance(c, ast.Constant)]
                assert not names & set(consts), f"{path.name}:{node.lineno} branches on a mode name"


async def test_stop_without_a_job_still_releases_the_key_line_a_killed_start_left() -> None:
    """A hub killed after the reverse tunnel's key line was written but before sbatch: the new
    hub finds the server without a job and stops it. That stop must remove the line (found by
    benchmarks.chaos, hub_kill at 'submit': the line stayed in authorized_keys for good)."""
    from gateway.hub.spawner import BatchSpawner

    released = []

    class Restored:
        async def release(self) -> None:
            released.append(True)

    await BatchSpawner.stop(SimpleNamespace(job_id="", submitting=0.0, connection=Restored()))  # type: ignore[arg-type]
    assert released == [True]
    # JupyterHub calls stop() only for servers poll() says run: the new hub's poll() finds no
    # job, so it must release too (but not while a start of this server is under way).
    await BatchSpawner.poll(SimpleNamespace(job_id="", submitting=0.0, connection=Restored(),  # type: ignore[arg-type]
                                            _spawn_pending=False))
    assert released == [True, True]
    await BatchSpawner.poll(SimpleNamespace(job_id="", submitting=0.0, connection=Restored(),  # type: ignore[arg-type]
                                            _spawn_pending=True))
    assert released == [True, True]
