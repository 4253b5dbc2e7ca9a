"""The lab is a real cluster: jobs run as real users on real nodes, the directory and sshd answer."""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import subprocess
import threading
import time
import uuid
from pathlib import Path

import ldap3
import pytest

from gateway.lab import Lab
from gateway.lab.procs import lab_pids, pid_alive
from tests.helpers.lab import job_output, passwords, submit_as, wait_for_file

pytestmark = pytest.mark.lab


def test_job_as_alice_runs_under_her_uid_on_c1(lab: dict) -> None:
    out = job_output(lab, "alice")
    submit_as(lab, "alice", "c1", "#!/bin/bash\nid -u; id -un; echo SLURMD_NODENAME=$SLURMD_NODENAME\n",
              str(out))
    text = wait_for_file(out, "SLURMD_NODENAME=")
    uid, name, node = text.split()
    assert (uid, name, node) == ("5001", "alice", "SLURMD_NODENAME=c1")
    assert out.stat().st_uid == 5001
    out.unlink()


def test_job_on_c2_reports_hostname_c2(lab: dict) -> None:
    out = job_output(lab, "bob")
    submit_as(lab, "bob", "c2", "#!/bin/bash\necho HOST=$(hostname)\nid -un\n", str(out))
    text = wait_for_file(out, "bob")
    assert "HOST=c2\n" in text
    out.unlink()


def _listen(host: str) -> tuple[socket.socket, int]:
    srv = socket.socket()
    srv.bind((host, 0))
    srv.listen(8)
    srv.settimeout(30)
    threading.Thread(target=_accept_until_closed, args=(srv,), daemon=True).start()
    return srv, srv.getsockname()[1]


def _accept_until_closed(srv: socket.socket) -> None:
    # Connections that never come (the loopback one must not) end the loop quietly.
    with contextlib.suppress(OSError):
        while True:
            srv.accept()[0].close()


def test_c2_cannot_reach_hub_loopback_but_reaches_its_veth_address(lab: dict) -> None:
    hub_addr = lab["nodes"]["c2"]["hub_address"]
    loopback_srv, loopback_port = _listen("127.0.0.1")
    veth_srv, veth_port = _listen(hub_addr)
    try:
        out = job_output(lab, "alice")
        script = (
            "#!/bin/bash\n"
            f"timeout 3 bash -c 'echo > /dev/tcp/127.0.0.1/{loopback_port}' 2>/dev/null "
            "&& echo LOOPBACK=open || echo LOOPBACK=closed\n"
            f"timeout 3 bash -c 'echo > /dev/tcp/{hub_addr}/{veth_port}' 2>/dev/null "
            "&& echo VETH=open || echo VETH=closed\n"
        )
        submit_as(lab, "alice", "c2", script, str(out))
        text = wait_for_file(out, "VETH=")
        out.unlink()
        # The positive control shows the probe works; only the hub's loopback is out of reach.
        assert "VETH=open" in text
        assert "LOOPBACK=closed" in text
    finally:
        loopback_srv.close()
        veth_srv.close()


def _ldap_server(info: dict, ca_file: str) -> ldap3.Server:
    tls = ldap3.Tls(ca_certs_file=ca_file, validate=ssl.CERT_REQUIRED)
    return ldap3.Server(info["ldap"]["host"], port=info["ldap"]["port"], tls=tls,
                        get_info=ldap3.NONE, connect_timeout=5)


def test_ldap_starttls_bind_verified_against_lab_ca(lab: dict) -> None:
    server = _ldap_server(lab, lab["ldap"]["ca_cert"])
    alice_dn = f"uid=alice,{lab['ldap']['people_dn']}"
    conn = ldap3.Connection(server, alice_dn, passwords(lab)["alice"], receive_timeout=5)
    conn.open()
    assert conn.start_tls()
    assert conn.bind()
    assert conn.extend.standard.who_am_i() == f"dn:{alice_dn}"
    conn.unbind()

    wrong = ldap3.Connection(server, alice_dn, "not-her-password", receive_timeout=5)
    wrong.open()
    assert wrong.start_tls()
    assert not wrong.bind()
    assert wrong.result["description"] == "invalidCredentials"
    wrong.unbind()


def test_ldap_starttls_refuses_a_certificate_from_another_ca(lab: dict, tmp_path: Path) -> None:
    from gateway.lab.tls import make_ca_and_server_cert

    make_ca_and_server_cert(tmp_path, ["localhost"], ["127.0.0.1"])
    conn = ldap3.Connection(_ldap_server(lab, str(tmp_path / "ca.crt")), receive_timeout=5)
    conn.open()
    with pytest.raises(ldap3.core.exceptions.LDAPStartTLSError, match="CERTIFICATE_VERIFY_FAILED"):
        conn.start_tls()


def test_directory_has_groups_in_both_shapes(lab: dict) -> None:
    server = _ldap_server(lab, lab["ldap"]["ca_cert"])
    svc = ldap3.Connection(server, lab["ldap"]["service_dn"], passwords(lab)["svc-hpcgate"],
                           auto_bind=ldap3.AUTO_BIND_TLS_BEFORE_BIND, receive_timeout=5)
    svc.search(lab["ldap"]["posix_groups_dn"], "(memberUid=bob)", attributes=["cn", "gidNumber"])
    # get_info=NONE: no schema, so values come back as strings
    assert sorted((e.cn.value, e.gidNumber.value) for e in svc.entries) == [
        ("hpc-users", "5100"), ("soundscape-lab", "5101")]
    carol_dn = f"uid=carol,{lab['ldap']['people_dn']}"
    svc.search(lab["ldap"]["named_groups_dn"], f"(member={carol_dn})", attributes=["cn"])
    assert sorted(e.cn.value for e in svc.entries) == ["hpc-users", "hub-admins"]
    svc.unbind()


def _ssh(info: dict, user: str, key_of: str, command: str) -> subprocess.CompletedProcess[str]:
    ssh = info["ssh"]
    return subprocess.run(
        ["ssh", "-i", ssh["user_keys"][key_of], "-p", str(ssh["port"]),
         "-o", f"UserKnownHostsFile={ssh['known_hosts']}", "-o", "StrictHostKeyChecking=yes",
         "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", f"{user}@{ssh['host']}", command],
        capture_output=True, text=True, timeout=20)


def test_ssh_key_from_up_reaches_lab_sshd(lab: dict) -> None:
    ok = _ssh(lab, "alice", "alice", "id -un")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == "alice"
    # bob's key is not alice's: the sshd really checks keys.
    refused = _ssh(lab, "alice", "bob", "id -un")
    assert refused.returncode == 255
    assert "Permission denied" in refused.stderr


def test_up_again_is_idempotent(lab: dict) -> None:
    t0 = time.monotonic()
    again = Lab(lab["dir"]).up(nodes=2)
    assert time.monotonic() - t0 < 5
    assert again["pids"] == lab["pids"]
    assert again["ports"] == lab["ports"]


def test_a_lab_whose_subnet_is_taken_moves_to_a_free_one_and_keeps_it() -> None:
    from gateway.lab import netns

    lab_dir = Path("/var/tmp") / f"hpcgate-lab-subnettest-{uuid.uuid4().hex[:8]}"
    lab_dir.mkdir()
    wanted = netns.namespace_for(lab_dir, "c2")
    blocker = f"hgblk{uuid.uuid4().hex[:6]}"  # another lab's link on the same /24
    subprocess.run(["ip", "link", "add", blocker, "type", "veth", "peer", "name", blocker + "p"],
                   check=True)
    try:
        subprocess.run(["ip", "addr", "add", f"{wanted.host_addr}/24", "dev", blocker], check=True)
        ns = netns.create(wanted, lab_dir)
        try:
            assert ns.host_addr != wanted.host_addr and ns.name == wanted.name
            assert netns.namespace_for(lab_dir, "c2") == ns  # kept for the next up and down
        finally:
            netns.delete(ns)
    finally:
        subprocess.run(["ip", "link", "delete", blocker], check=False)
        shutil.rmtree(lab_dir, ignore_errors=True)


def test_down_leaves_no_process_namespace_or_mount(tmp_path_factory: pytest.TempPathFactory) -> None:
    lab_dir = Path("/var/tmp") / f"hpcgate-lab-downtest-{uuid.uuid4().hex[:8]}"
    lab = Lab(lab_dir)
    try:
        info = lab.up(nodes=2, postgres=True)
        assert "postgres" in info["pids"]
        namespace = info["nodes"]["c2"]["namespace"]
        out = job_output(info, "carol")  # in that lab's own homes: removed with it
        submit_as(info, "carol", "c2", "#!/bin/bash\necho started\nsleep 600\n", str(out))
        wait_for_file(out, "started")
        assert lab_pids(lab_dir), "a running lab must be found in the process table"
    finally:
        lab.down()
    assert not any(pid_alive(p) for p in info["pids"].values())
    assert lab_pids(lab_dir) == []
    leftovers = subprocess.run(["pgrep", "-u", "carol", "-f", "sleep 600"], capture_output=True)
    assert leftovers.returncode == 1, leftovers.stdout
    assert namespace not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                           text=True).stdout
    mounts = Path("/proc/mounts").read_text()
    assert namespace not in mounts and str(lab_dir) not in mounts
    assert Lab(lab_dir).status()["ok"] is False
    shutil.rmtree(lab_dir)  # after the checks: a failing run keeps the directory to look at
