"""Depot provisioning on the real filesystem (ext4 ACLs, setfacl) and group numbers from the lab's
real directory: what `hpcgate depot` does, below the command line."""

from __future__ import annotations

import json
import os
import ssl
import stat
import subprocess
from pathlib import Path
from typing import Any

import ldap3
import pytest

from gateway.depots.groups import DIRECTORY, LOCAL, GroupError, GroupResolver
from gateway.depots.provision import (
    ProvisionError,
    apply,
    desired_state,
    drift,
    read_state,
    unreachable_parent,
)
from gateway.lab.site import write_lab_site
from gateway.policy.load import load_policy, load_policy_text
from gateway.policy.model import Depot

GID, READERS = 64101, 64102  # numbers no group uses: chown and ACLs take any number


def names(n: int) -> str:
    return str(n)


def getfacl(path: Path) -> str:
    return subprocess.run(["getfacl", "-n", "-p", str(path)], capture_output=True, text=True,
                          check=True).stdout


def test_apply_makes_a_depot_that_reads_back_exactly_as_desired(tmp_path: Path) -> None:
    path = tmp_path / "depots" / "lab"  # the parent is made too
    want = desired_state(Depot(path=str(path), group="g", access="rw", read_only_groups=("r",)),
                         GID, {"r": READERS})
    assert [d.aspect for d in drift(want, read_state(str(path)), names, names)] == ["missing"]
    apply(want, read_state(str(path)))
    st = path.lstat()
    assert (st.st_uid, st.st_gid, oct(stat.S_IMODE(st.st_mode))) == (0, GID, "0o2770")
    assert drift(want, read_state(str(path)), names, names) == []
    # What admins see with the usual tool.
    text = getfacl(path)
    for line in ("group::rwx", f"group:{READERS}:r-x", "mask::rwx", "other::---",
                 "default:group::rwx", f"default:group:{READERS}:r-x", "default:other::---"):
        assert f"\n{line}\n" in text, text
    assert (path.parent.stat().st_mode & 0o777) == 0o755


def test_new_files_stay_group_usable_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "lab"
    want = desired_state(Depot(path=str(path), group="g"), GID, {})
    apply(want, read_state(str(path)))
    old = os.umask(0o077)  # the most private umask a member could have
    try:
        (path / "take.wav").write_bytes(b"RIFF")
        (path / "session").mkdir()
    finally:
        os.umask(old)
    f, d = (path / "take.wav").stat(), (path / "session").stat()
    assert f.st_gid == GID and stat.S_IMODE(f.st_mode) & 0o060 == 0o060
    assert d.st_gid == GID and d.st_mode & stat.S_ISGID and stat.S_IMODE(d.st_mode) & 0o070 == 0o070
    assert "default:group::rwx" in getfacl(path / "session")  # inherited further down


def test_drift_made_by_hand_is_found_and_repaired(tmp_path: Path) -> None:
    path = tmp_path / "lab"
    want = desired_state(Depot(path=str(path), group="g", access="ro", read_only_groups=("r",)),
                         GID, {"r": READERS})
    apply(want, read_state(str(path)))
    os.chmod(path, 0o777)  # noqa: S103 - drift made by hand, on purpose
    os.chown(path, 1, 1)
    subprocess.run(["setfacl", "-k", str(path)], check=True)  # the default ACL removed
    found = drift(want, read_state(str(path)), names, names)
    assert {d.aspect for d in found} == {"mode", "owner", "group", "default-acl"}, found
    apply(want, read_state(str(path)))
    assert drift(want, read_state(str(path)), names, names) == []
    subprocess.run(["setfacl", "-b", str(path)], check=True)  # every ACL entry removed
    assert {d.aspect for d in drift(want, read_state(str(path)), names, names)} == {
        "acl", "default-acl"}
    apply(want, read_state(str(path)))
    assert drift(want, read_state(str(path)), names, names) == []


def test_a_symlink_is_never_made_a_depot(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    path = tmp_path / "lab"
    path.symlink_to(target)
    want = desired_state(Depot(path=str(path), group="g"), GID, {})
    [found] = drift(want, read_state(str(path)), names, names)
    assert found.aspect == "kind"
    with pytest.raises(ProvisionError, match="not a directory"):
        apply(want, read_state(str(path)))
    assert target.stat().st_gid != GID


@pytest.fixture
def lab_policy(lab: dict[str, Any], tmp_path: Path) -> Path:
    return write_lab_site(lab, lab["ldap"]["service_password_file"], tmp_path / "site.yaml")


def _admin(lab: dict[str, Any]) -> ldap3.Connection:
    ldap = lab["ldap"]
    password = json.loads(Path(ldap["passwords_file"]).read_text())["admin"]
    tls = ldap3.Tls(ca_certs_file=ldap["ca_cert"], validate=ssl.CERT_REQUIRED)
    server = ldap3.Server(ldap["host"], port=ldap["port"], tls=tls, get_info=ldap3.NONE)
    conn = ldap3.Connection(server, user=ldap["admin_dn"], password=password)
    conn.open()
    conn.start_tls()
    assert conn.bind(), conn.result
    return conn


@pytest.mark.lab
def test_gid_comes_from_the_directorys_gidnumber(lab: dict[str, Any], lab_policy: Path) -> None:
    # A group only the directory knows, with a number this host's group database has never seen.
    dn = f"cn=depot-probe,{lab['ldap']['posix_groups_dn']}"
    admin = _admin(lab)
    admin.delete(dn)
    assert admin.add(dn, ["posixGroup"], {"cn": "depot-probe", "gidNumber": 5199}), admin.result
    try:
        with GroupResolver(load_policy(lab_policy)) as resolver:
            probe = resolver.resolve("depot-probe")
            lab_group = resolver.resolve("soundscape-lab")
            with pytest.raises(GroupError, match="the directory has no posixGroup 'no-such-group'"):
                resolver.resolve("no-such-group")
    finally:
        admin.delete(dn)
        admin.unbind()
    assert (probe.gid, probe.source, probe.local_gid, probe.mismatch) == (5199, DIRECTORY, None, None)
    assert (lab_group.gid, lab_group.source, lab_group.local_gid) == (5101, DIRECTORY, 5101)


@pytest.mark.lab
def test_without_a_directory_the_local_group_database_answers(lab: dict[str, Any],
                                                            lab_policy: Path) -> None:
    text = lab_policy.read_text()
    start = text.index("\ndirectory:\n")
    end = text.index("\ndepots:\n")
    policy = load_policy_text(text[:start] + text[end:])
    with GroupResolver(policy) as resolver:
        group = resolver.resolve("soundscape-lab")
        assert (group.gid, group.source) == (5101, LOCAL)
        with pytest.raises(GroupError, match="no group 'depot-probe' in this host's group database"):
            resolver.resolve("depot-probe")


@pytest.mark.lab
def test_a_wrong_service_password_is_a_sentence(lab: dict[str, Any], lab_policy: Path,
                                                tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password\n")
    text = lab_policy.read_text().replace(lab["ldap"]["service_password_file"], str(wrong))
    with GroupResolver(load_policy_text(text)) as resolver, \
            pytest.raises(GroupError, match="refused .*invalidCredentials"):
        resolver.resolve("soundscape-lab")


def test_a_parent_others_cannot_pass_is_named(tmp_path: Path) -> None:
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o750)
    closed.chmod(0o750)
    (closed / "open").mkdir()
    (closed / "open").chmod(0o755)
    assert unreachable_parent(str(closed / "open" / "lab")) == str(closed)
    closed.chmod(0o751)
    assert unreachable_parent(str(closed / "open" / "lab")) != str(closed)
    # Parents apply() makes are passable whatever root's umask.
    old = os.umask(0o077)
    try:
        path = tmp_path / "new" / "deeper" / "lab"
        apply(desired_state(Depot(path=str(path), group="g"), GID, {}), read_state(str(path)))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "new" / "deeper").stat().st_mode) == 0o755
