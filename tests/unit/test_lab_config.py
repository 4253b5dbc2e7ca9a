"""The lab's generated configuration, checked without starting anything."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

import gateway.lab as lab_module
from gateway.lab import Lab, LabError, cluster, directory, netns


def test_namespaces_differ_per_state_directory() -> None:
    a = netns.namespace_for(Path("/var/tmp/lab-a"), "c2")
    b = netns.namespace_for(Path("/var/tmp/lab-b"), "c2")
    assert a == netns.namespace_for(Path("/var/tmp/lab-a"), "c2")
    assert a.name != b.name and a.host_if != b.host_if
    assert len(a.host_if) <= 15 and len(a.node_if) <= 15  # Linux interface name limit
    assert a.node_addr.rsplit(".", 1)[0] == a.host_addr.rsplit(".", 1)[0]


def test_nodes_conf_two_nodes_points_c2_at_its_namespace_address() -> None:
    ns = netns.namespace_for(Path("/var/tmp/lab-a"), "c2")
    conf = cluster.nodes_conf({"c2": ns})
    assert f"SlurmctldHost=localhost({ns.host_addr})" in conf
    assert f"NodeName=c2 NodeHostname=c2 NodeAddr={ns.node_addr}" in conf
    assert "PartitionName=debug Nodes=c1,c2 Default=YES" in conf
    assert "MaxTime=2-00:00:00" in conf.split("PartitionName=long")[1]


def test_slurm_conf_enforces_limits_and_keeps_final_states() -> None:
    conf = cluster.slurm_conf(Path("/x"), 1, 2)
    assert "EnforcePartLimits=ALL" in conf
    assert "JobCompType=jobcomp/filetxt" in conf and "JobCompLoc=/x/log/jobcomp.txt" in conf
    assert "AuthAltTypes=auth/jwt" in conf


def test_ssha_is_verifiable() -> None:
    hashed = directory.ssha("s3cret")
    raw = base64.b64decode(hashed.removeprefix("{SSHA}"))
    digest, salt = raw[:20], raw[20:]
    assert hashlib.sha1(b"s3cret" + salt).digest() == digest  # noqa: S324


def test_demo_ldif_has_people_and_both_group_shapes() -> None:
    names = ["alice", "bob", "carol", "svc-hpcgate"]
    ldif = directory.demo_ldif({n: "pw" for n in names}, Path("/var/tmp/lab-a"))
    assert "dn: uid=alice,ou=people,dc=example,dc=org" in ldif
    # Each lab's own homes, never the Unix accounts' /home shared by every lab on the machine.
    assert "homeDirectory: /var/tmp/lab-a/home/alice\n" in ldif and "/home/alice\n" not in \
        ldif.replace("/var/tmp/lab-a/home/alice\n", "")
    soundscape = ldif.split("dn: cn=soundscape-lab,ou=posix")[1].split("\n\n")[0]
    assert "memberUid: alice" in soundscape and "memberUid: bob" in soundscape
    assert "memberUid: carol" not in soundscape
    admins = ldif.split("dn: cn=hub-admins,ou=names")[1].split("\n\n")[0]
    assert "member: uid=carol,ou=people,dc=example,dc=org" in admins
    assert "userPassword: pw" not in ldif  # only hashes


def test_homes_ldif_moves_an_older_directory_to_this_labs_homes() -> None:
    ldif = directory.homes_ldif(Path("/var/tmp/lab-a"))
    assert ldif.count("changetype: modify\nreplace: homeDirectory\n") == 3
    assert "dn: uid=carol,ou=people,dc=example,dc=org\nchangetype: modify\nreplace: homeDirectory\n" \
           "homeDirectory: /var/tmp/lab-a/home/carol\n-" in ldif


def test_missing_packages_are_named_with_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real_which = lab_module.shutil.which
    monkeypatch.setattr(lab_module.shutil, "which",
                        lambda cmd, path=None: None if cmd in ("slapd", "slapadd", "munged")
                        else real_which(cmd, path=path))
    with pytest.raises(LabError) as err:
        Lab("/var/tmp/never-started").up()
    assert "apt-get install -y munge slapd" in str(err.value)


def test_node_count_is_one_or_two() -> None:
    with pytest.raises(LabError, match="one or two"):
        Lab("/var/tmp/never-started").up(nodes=3)


def test_a_hub_made_again_on_its_state_directory_keeps_every_port(tmp_path: Path) -> None:
    # A restarted demo: jobs still running point their launcher and tunnel at the hub API port.
    from gateway.lab.hub import LabHub

    lab = tmp_path / "lab"
    info = {"dir": str(lab), "users": {"alice": {}, "bob": {}},
            "slurm": {"conf": f"{lab}/etc/slurm.conf", "env": {"SLURM_CONF": f"{lab}/etc/slurm.conf"}},
            "ldap": {"uri": "ldap://127.0.0.1:1", "ca_cert": f"{lab}/tls/ca.crt",
                     "service_password_file": f"{lab}/secrets/pw"},
            "nodes": {"c1": {}}, "ssh": {"port": 2, "known_hosts": f"{lab}/ssh/known_hosts"}}
    first = LabHub(info, tmp_path / "hub")
    again = LabHub(info, tmp_path / "hub")
    assert (again.proxy_port, again.hub_port, again.api_port) == (
        first.proxy_port, first.hub_port, first.api_port)
    assert f":{first.hub_port}/hub/api" in (tmp_path / "hub" / "site.yaml").read_text()
    other = LabHub(info, tmp_path / "other-hub")  # another hub's state: its own ports
    assert other.hub_port != first.hub_port
    assert LabHub(info, tmp_path / "hub", proxy_port=8000).hub_port == first.hub_port


def test_extra_users_are_plain_cluster_users_apart_from_the_named_ones() -> None:
    from gateway.lab import accounts

    assert accounts.extra_users(0) == ()
    extra = accounts.extra_users(12)
    assert [u.name for u in extra[:2]] == ["user01", "user02"] and extra[-1].name == "user12"
    assert all(u.groups == ("hpc-users",) for u in extra)
    named = {u.uid for u in accounts.USERS}
    assert not named & {u.uid for u in extra} and len({u.uid for u in extra}) == 12
    assert accounts.extra_users(100)[0].name == "user001"  # names sort in order
    with pytest.raises(LabError):
        accounts.extra_users(-1)


def test_extra_users_ldif_adds_people_and_one_membership_per_change() -> None:
    from gateway.lab import accounts

    extra = accounts.extra_users(2)
    people = directory.extra_users_ldif(extra, {"user01": "a", "user02": "b"}, Path("/lab"))
    assert "dn: uid=user02,ou=people,dc=example,dc=org" in people
    assert "homeDirectory: /lab/home/user01" in people and "gidNumber: 5100" in people
    changes = directory.memberships_ldif(extra).strip().split("\n\n")
    # one value per change: a member already there fails only its own change under ldapmodify -c
    assert len(changes) == 4
    assert all(c.count("memberUid:") + c.count("member:") == 1 for c in changes)


def test_slurm_conf_has_room_for_a_busy_queue() -> None:
    assert f"MaxJobCount={cluster.MAX_JOB_COUNT}" in cluster.slurm_conf(Path("/x"), 1, 2)
    assert cluster.MAX_JOB_COUNT >= 20000 + 10000  # 20,000 background jobs beside the tests' own


def test_a_lab_keeps_the_subnet_it_moved_to(tmp_path: Path) -> None:
    derived = netns.namespace_for(tmp_path, "c2")
    (tmp_path / "netns-subnet").write_text("123\n")  # what create() keeps after a clash
    kept = netns.namespace_for(tmp_path, "c2")
    assert (kept.host_addr, kept.node_addr) == ("10.213.123.1", "10.213.123.2")
    assert (kept.name, kept.host_if) == (derived.name, derived.host_if)  # names stay the dir's


def test_a_hub_on_postgresql_gets_its_own_database_named_after_its_state(tmp_path: Path) -> None:
    from gateway.lab import postgres
    from gateway.lab.hub import LabHub, database_name, hub_config

    assert database_name(tmp_path / "hub") == database_name(tmp_path / "hub" / ".")
    assert database_name(tmp_path / "hub") != database_name(tmp_path / "other")
    assert postgres._NAME.match(database_name(tmp_path / "hub"))
    info = {"dir": str(tmp_path), "nodes": {"c1": {}}, "users": {"alice": {}},
            "postgres": postgres.describe(tmp_path)}
    url = postgres.database_url(info, "hub_x")
    # No password: root logs in by peer authentication on the lab's socket.
    assert url == f"postgresql+psycopg2://hpcgate@/hub_x?host={tmp_path}/postgres/run&port=5432"
    text = hub_config(info, tmp_path, tmp_path / "site.yaml", 1, 2, 3, db_url=url)
    assert f"c.JupyterHub.db_url = {url!r}" in text
    assert f'c.JupyterHub.db_url = "sqlite:///{tmp_path}/jupyterhub.sqlite"'.replace('"', "'") in (
        hub_config(info, tmp_path, tmp_path / "site.yaml", 1, 2, 3))
    with pytest.raises(ValueError, match="database must be one of"):
        LabHub(info, tmp_path / "hub", database="mysql")


def test_nodes_may_declare_more_cores_than_the_machine_has() -> None:
    assert "CPUs=16 " in cluster.nodes_conf({}) and "CoresPerSocket=16 " in cluster.nodes_conf({})
    wide = cluster.nodes_conf({}, cpus=256)
    assert "CPUs=256 " in wide and "CoresPerSocket=256 " in wide and "CPUs=16 " not in wide
    with pytest.raises(LabError, match="--node-cpus"):
        Lab("/nonexistent-lab").up(node_cpus=-1)


def test_memory_is_enforced_by_cgroup_only_where_asked(tmp_path: Path) -> None:
    assert "TaskPlugin=task/none" in cluster.slurm_conf(Path("/x"), 1, 2)
    assert "TaskPlugin=task/cgroup" in cluster.slurm_conf(Path("/x"), 1, 2, memory_enforced=True)
    assert "ConstrainRAMSpace=yes" in cluster.cgroup_conf()
    assert "ConstrainCores=no" in cluster.cgroup_conf()  # 16 cores declared on 2 real ones
    # No cgroup v1 memory controller there: the lab runs without enforcement.
    assert not cluster.memory_cgroup_usable(tmp_path)
    (tmp_path / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert cluster.memory_cgroup_usable(tmp_path)
