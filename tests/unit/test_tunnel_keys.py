"""Per-job keys and the authorized_keys file the hub edits."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import load_ssh_private_key

from gateway.tunnel import hubside
from gateway.tunnel.keys import AuthorizedKeys, KeyFileError, entry_line, generate_key, tag_of


def test_generated_key_pair_matches_and_is_unencrypted_openssh() -> None:
    key = generate_key()
    assert key.private_openssh.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    loaded = load_ssh_private_key(key.private_openssh.encode(), password=None)
    from cryptography.hazmat.primitives import serialization

    public = loaded.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                              serialization.PublicFormat.OpenSSH).decode()
    assert public == key.public and key.public.startswith("ssh-ed25519 ")
    assert generate_key().public != key.public


def test_entry_line_allows_only_its_port_and_the_hub_api() -> None:
    key = generate_key()
    line = entry_line(key.public, "alice-default-0a1b2c3d", 41234, "10.0.0.1", 8081)
    options, kind, blob, comment = line.split(" ")
    assert options.split(",") == ["restrict", "port-forwarding", 'command="/bin/false"',
                                  'permitlisten="127.0.0.1:41234"', 'permitopen="10.0.0.1:8081"']
    assert f"{kind} {blob}" == key.public
    assert comment == "hpcgate-job:alice-default-0a1b2c3d"
    assert tag_of(line) == "alice-default-0a1b2c3d"


@pytest.mark.parametrize("tag", ["a b", 'x",permitopen="*:*', "", "a\nb", "-lead"])
def test_entry_line_refuses_tags_that_could_change_the_line(tag: str) -> None:
    with pytest.raises(ValueError):
        entry_line(generate_key().public, tag, 41234, "10.0.0.1", 8081)


@pytest.mark.parametrize("args", [(0, "h", 1), (70000, "h", 1), (1, 'h",x="', 1), (1, "h", 0)])
def test_entry_line_refuses_bad_ports_and_hosts(args: tuple) -> None:
    port, host, api = args
    with pytest.raises(ValueError):
        entry_line(generate_key().public, "t", port, host, api)


def test_entry_line_refuses_other_key_material() -> None:
    with pytest.raises(ValueError):
        entry_line('ssh-ed25519 AAAA" evil', "t", 1, "h", 2)
    with pytest.raises(ValueError):
        entry_line("ssh-rsa AAAAB3", "t", 1, "h", 2)


def line(tag: str, port: int = 41234) -> str:
    return entry_line(generate_key().public, tag, port, "127.0.0.1", 8081)


def test_add_remove_keep_foreign_lines(tmp_path: Path) -> None:
    path = tmp_path / "hpcgate-tunnel"
    path.write_text("ssh-ed25519 AAAAadmin admin@host\n# a comment\n")
    keys = AuthorizedKeys(path)
    keys.add(line("a-1"))
    keys.add(line("b-2", 41235))
    assert keys.tags() == ["a-1", "b-2"]
    keys.add(line("a-1", 41236))  # the same tag replaces its line
    assert keys.tags() == ["b-2", "a-1"] and "41236" in path.read_text()
    assert keys.remove("a-1") == 1 and keys.remove("a-1") == 0
    assert path.read_text().splitlines()[:2] == ["ssh-ed25519 AAAAadmin admin@host", "# a comment"]
    assert keys.tags() == ["b-2"]
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_add_creates_the_file(tmp_path: Path) -> None:
    keys = AuthorizedKeys(tmp_path / "k")
    keys.add(line("x"))
    assert keys.tags() == ["x"]
    with pytest.raises(ValueError):
        keys.add("ssh-ed25519 AAAA untagged")


def test_refuses_a_symlinked_file(tmp_path: Path) -> None:
    target = tmp_path / "shadow"
    target.write_text("secret\n")
    (tmp_path / "k").symlink_to(target)
    with pytest.raises(KeyFileError):
        AuthorizedKeys(tmp_path / "k").add(line("x"))
    assert target.read_text() == "secret\n"


def test_concurrent_writers_lose_no_line(tmp_path: Path) -> None:
    path = tmp_path / "k"
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(10):
                AuthorizedKeys(path).add(line(f"w{n}-{i}", 40000 + n * 10 + i))
            for i in range(0, 10, 2):
                AuthorizedKeys(path).remove(f"w{n}-{i}")
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(AuthorizedKeys(path).tags()) == sorted(
        f"w{n}-{i}" for n in range(6) for i in range(1, 10, 2))


def test_concurrent_processes_lose_no_line(tmp_path: Path) -> None:
    path = tmp_path / "k"
    pids = []
    for n in range(4):
        pid = os.fork()
        if pid == 0:
            try:
                for i in range(8):
                    AuthorizedKeys(path).add(line(f"p{n}-{i}", 41000 + n * 10 + i))
            finally:
                os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)
    assert len(AuthorizedKeys(path).tags()) == 32


def test_prepare_and_release(tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("[10.0.0.1]:2222 ssh-ed25519 AAAAhostkey\n")
    settings = hubside.TunnelSettings(
        ssh_host="10.0.0.1", ssh_port=2222, ssh_user="hpcgate-tunnel", known_hosts=str(known),
        authorized_keys=str(tmp_path / "ak"), hub_api_url="http://10.0.0.1:8081/hub/api/",
        ports=(45000, 45010))
    section = hubside.prepare(settings, "alice-default-1")
    port = section["remote_port"]
    assert 45000 <= port <= 45010 and section["host_keys"] == ["ssh-ed25519 AAAAhostkey"]
    assert (section["hub_api_host"], section["hub_api_port"]) == ("10.0.0.1", 8081)
    assert section["private_key"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert AuthorizedKeys(settings.authorized_keys).tags() == ["alice-default-1"]
    with pytest.raises(hubside.TunnelConfigError):
        hubside.allocate_port((port, port))  # claimed
    hubside.release(settings.authorized_keys, "alice-default-1", port)
    hubside.release(settings.authorized_keys, "alice-default-1", port)  # twice: no error
    assert AuthorizedKeys(settings.authorized_keys).tags() == []
    assert hubside.allocate_port((port, port)) == port
    hubside.unclaim(port)


def test_prepare_refuses_an_endpoint_without_a_pinned_key(tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("[10.0.0.1]:22 ssh-ed25519 AAAAhostkey\n")
    settings = hubside.TunnelSettings(
        ssh_host="10.0.0.1", ssh_port=2222, ssh_user="t", known_hosts=str(known),
        authorized_keys=str(tmp_path / "ak"), hub_api_url="http://10.0.0.1:8081/hub/api/",
        ports=(45000, 45010))
    with pytest.raises(hubside.TunnelConfigError, match="no host key"):
        hubside.prepare(settings, "t1")
    assert not (tmp_path / "ak").exists()


def test_a_port_named_by_a_line_left_behind_never_goes_to_another_server(tmp_path: Path) -> None:
    # A hub restarted after a crash forgets its claims; the file still says who may listen where.
    known = tmp_path / "known_hosts"
    known.write_text("[10.0.0.1]:2222 ssh-ed25519 AAAAhostkey\n")
    settings = hubside.TunnelSettings(
        ssh_host="10.0.0.1", ssh_port=2222, ssh_user="t", known_hosts=str(known),
        authorized_keys=str(tmp_path / "ak"), hub_api_url="http://10.0.0.1:8081/hub/api/",
        ports=(29020, 29021))  # below the ephemeral range: no client holds them
    first = hubside.prepare(settings, "alice-default-1")["remote_port"]
    hubside.unclaim(first)  # as after a restart: only the authorized_keys line remains
    second = hubside.prepare(settings, "bob-default-2")["remote_port"]
    assert {first, second} == {29020, 29021}
    hubside.unclaim(second)
    with pytest.raises(hubside.TunnelConfigError, match="no free loopback port"):
        hubside.prepare(settings, "carol-default-3")
    assert sorted(AuthorizedKeys(settings.authorized_keys).tags()) == ["alice-default-1",
                                                                        "bob-default-2"]
