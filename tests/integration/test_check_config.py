"""`hpcgate check-config` on the real lab: the demo policy passes, and each misconfiguration planted
in a copy of it is found and explained.

Every run is the real thing: the hub's runner (sudo to alice), scontrol through the adapter
the lab's slapd, the job interpreter executed as alice, and with --submit-test-job real jobs on c1
and c2 (c2 lives in its own network namespace and cannot reach the hub's loopback).
"""

from __future__ import annotations

import io
import json
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.admin.check import main
from gateway.lab.site import lab_site_policy

pytestmark = pytest.mark.lab

DEMO = Path(__file__).resolve().parents[2] / "site_configs" / "demo.yaml"
Policy = dict[str, Any]


class Site:
    """demo.yaml adjusted to the test lab, written out (after edits) for check-config to read."""

    def __init__(self, lab: dict, tmp_path: Path):
        self.lab, self.dir = lab, tmp_path
        password = json.loads(Path(lab["ldap"]["passwords_file"]).read_text())["svc-hpcgate"]
        self.secret = tmp_path / "svc-hpcgate.password"
        self.secret.write_text(password + "\n")
        self.secret.chmod(0o600)
        self.count = 0

    def demo(self) -> Policy:
        return demo_for(self.lab, self.secret)

    def __call__(self, policy: Policy | None = None) -> Path:
        self.count += 1
        path = self.dir / f"site-{self.count}.yaml"
        path.write_text(yaml.safe_dump(policy if policy is not None else self.demo(), sort_keys=False))
        return path


@pytest.fixture
def site(lab: dict, tmp_path: Path) -> Site:
    return Site(lab, tmp_path)


def demo_for(lab: dict, secret: Path) -> Policy:
    return lab_site_policy(lab, secret)


def check(path: Path, *args: str) -> tuple[int, str]:
    out = io.StringIO()
    rc = main([str(path), *args], out=out)
    return rc, out.getvalue()


def failures(text: str) -> list[str]:
    return [line.strip()[2:] for line in text.splitlines() if line.strip().startswith("✗ ")]


@pytest.fixture
def listener() -> Iterator[Callable[[str], int]]:
    """TCP listeners standing in for the hub API: accept and close, on the address asked for."""
    sockets: list[socket.socket] = []

    def listen(host: str) -> int:
        srv = socket.socket()
        srv.bind((host, 0))
        srv.listen(16)
        sockets.append(srv)

        def serve() -> None:
            while True:
                try:
                    conn, _ = srv.accept()
                except OSError:
                    return
                conn.close()

        threading.Thread(target=serve, daemon=True).start()
        return srv.getsockname()[1]

    yield listen
    for srv in sockets:
        srv.close()


def test_demo_adjusted_to_the_lab_passes_every_check(site: Site) -> None:
    rc, text = check(site(), "--submit-test-job")
    assert rc == 0, text
    assert failures(text) == []
    assert "Bound to ldap://127.0.0.1:" in text and "(StartTLS, certificate verified)" in text
    assert "Groups hpc-users, soundscape-lab, hub-admins exist" in text
    assert "The policy's limits fit Slurm's partitions" in text
    assert "imports the gateway from" in text
    for partition in ("debug", "long"):
        for node in ("c1", "c2"):
            assert f"ran on {node} (partition {partition}, node {node}): SLURM_CONF, PATH and the " \
                   "interpreter work, reaches" in text
    assert text.rstrip().endswith("Result: every check passed.")


def test_partition_promising_more_than_slurm_allows(site: Site) -> None:
    policy = site.demo()
    policy["partitions"]["debug"]["max_walltime"] = "2h"
    policy["partitions"]["debug"]["max_memory"] = "12G"
    policy["groups"]["hub-admins"]["limits"] = {"long": {"max_walltime": "3d", "max_cpus": 32}}
    rc, text = check(site(policy))
    assert rc == 1
    found = failures(text)
    assert ("partitions.debug.max_walltime promises 2 hours, but Slurm allows at most 30 minutes on "
            "partition 'debug' (MaxTime).") in found
    assert ("partitions.debug.max_memory promises 12 GB, but Slurm allows at most 8000 MB on "
            "partition 'debug' (MaxMemPerNode).") in found
    assert ("groups.hub-admins.limits.long.max_walltime promises 3 days, but Slurm allows at most "
            "2 days on partition 'long' (MaxTime).") in found
    assert any(f.startswith("groups.hub-admins.limits.long.max_cpus promises 32 cores") for f in found)


def test_unknown_partition(site: Site) -> None:
    policy = site.demo()
    policy["partitions"]["gpu"] = {"description": "GPUs", "max_walltime": "1h", "max_cpus": 4,
                                   "max_memory": "4G", "max_gpus": 1}
    policy["groups"]["hub-admins"]["partitions"].append("gpu")
    rc, text = check(site(policy), "--submit-test-job")
    assert rc == 1
    assert failures(text) == ["Slurm has no partition 'gpu' (it has: debug, long)."]


def test_interpreter_users_cannot_execute(site: Site, tmp_path: Path) -> None:
    # tmp_path sits under root's 0700 pytest directory: alice cannot reach anything in it.
    hidden = tmp_path / "env" / "bin" / "python"
    hidden.parent.mkdir(parents=True)
    hidden.symlink_to("/opt/hpcgate/venv/bin/python")
    assert os.access(hidden, os.X_OK)  # root can: only the check as alice tells
    policy = site.demo()
    policy["job"]["python"] = str(hidden)
    rc, text = check(site(policy))
    assert rc == 1
    assert failures(text) == [
        f"alice cannot execute the job's interpreter {hidden} (missing, or it or a parent directory "
        "is not readable and executable by users): jobs cannot start the notebook server."]


def test_interpreter_without_the_gateway(site: Site) -> None:
    policy = site.demo()
    policy["job"]["python"] = "/usr/bin/python3"  # Debian's: runs, but has no hpcgate
    policy["job"]["prologue"] = "umask 0027\n"
    rc, text = check(site(policy), "--submit-test-job")
    assert rc == 1
    found = failures(text)
    assert ("alice runs /usr/bin/python3 but it cannot import the gateway: ModuleNotFoundError: No "
            "module named 'gateway'. Install hpcgate into that environment, readable by users.") in found
    # ... and inside real jobs on both nodes as well.
    assert sum("/usr/bin/python3 cannot import the gateway: ModuleNotFoundError" in f
               for f in found) == 4


def test_wrong_service_account_password(site: Site, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password\n")
    wrong.chmod(0o600)
    policy = site.demo()
    policy["directory"]["bind_password_file"] = str(wrong)
    rc, text = check(site(policy))
    assert rc == 1
    (found,) = failures(text)
    assert found.startswith("The directory at ldap://127.0.0.1:")
    assert found.endswith("refused the service account cn=svc-hpcgate,ou=services,dc=example,dc=org "
                          "(invalidCredentials). The password in directory.bind_password_file is "
                          "wrong, or the DN is.")


def test_group_the_directory_does_not_have(site: Site) -> None:
    policy = site.demo()
    policy["groups"]["soundscape-labs"] = {"partitions": ["debug"]}  # a typo of soundscape-lab
    rc, text = check(site(policy))
    assert rc == 1
    assert failures(text) == [
        "The directory has no group 'soundscape-labs' under ou=posix,ou=groups,dc=example,dc=org: the "
        "rule groups.soundscape-labs matches nobody (a typo?)."]


def test_missing_slurm_conf(site: Site, lab: dict) -> None:
    policy = site.demo()
    del policy["cluster"]["environment"]["SLURM_CONF"]
    rc, text = check(site(policy))
    assert rc == 1
    found = failures(text)
    if not Path("/etc/slurm/slurm.conf").exists():
        assert found[0] == (
            "cluster.environment sets no SLURM_CONF and /etc/slurm/slurm.conf does not exist: Slurm "
            "commands run through sudo (and jobs) cannot find their configuration. Add SLURM_CONF to "
            "cluster.environment.")
    assert any(f.startswith("Asked as alice: `scontrol show partition` failed: ") for f in found)

    policy["cluster"]["environment"]["SLURM_CONF"] = lab["slurm"]["conf"] + ".missing"
    rc, text = check(site(policy))
    assert rc == 1
    assert failures(text) == [
        f"alice cannot read SLURM_CONF={lab['slurm']['conf']}.missing (missing, or a parent directory "
        "is closed to users): no Slurm command can work."]


def test_names_that_do_not_resolve(site: Site) -> None:
    policy = site.demo()
    policy["partitions"]["debug"]["node"] = "ghost-node"
    policy["connection"]["ssh_host"] = "tunnel.invalid"
    rc, text = check(site(policy))
    assert rc == 1
    found = failures(text)
    assert ("The host 'tunnel.invalid' named in connection.ssh_host does not resolve on this machine: "
            "fix the name or add it to DNS or /etc/hosts.") in found
    assert ("partitions.debug.node 'ghost-node' does not resolve on this machine and the scheduler "
            "does not list it: no job could start there.") in found
    assert ("Partition 'debug' pins node 'ghost-node', which Slurm does not list in that partition "
            "(c1, c2).") in found


def test_direct_mode_with_a_hub_api_c2_cannot_reach(site: Site, lab: dict, listener: Any) -> None:
    port = listener("127.0.0.1")
    policy = site.demo()
    policy["connection"] = {"mode": "direct", "hub_api_url": f"http://127.0.0.1:{port}/hub/api"}
    rc, text = check(site(policy), "--submit-test-job")
    assert rc == 1
    found = failures(text)
    for partition in ("debug", "long"):
        assert (f"A job on c2 (partition {partition}, node c2) cannot reach the hub API "
                f"(connection.hub_api_url) at 127.0.0.1:{port}: use connection mode reverse, or a hub "
                "address every node can reach.") in found
    assert len(found) == 2  # c1 shares the hub's loopback: its jobs get through
    assert f"ran on c1 (partition debug, node c1): SLURM_CONF, PATH and the interpreter work, " \
           f"reaches 127.0.0.1:{port}." in text

    # The positive control: the hub API on the address c2 can reach works from both nodes.
    hub = lab["nodes"]["c2"]["hub_address"]
    port = listener(hub)
    policy["connection"]["hub_api_url"] = f"http://{hub}:{port}/hub/api"
    rc, text = check(site(policy), "--submit-test-job")
    assert rc == 0, text


def test_a_failing_prologue(site: Site) -> None:
    policy = site.demo()
    policy["job"]["prologue"] = "set -e\nsource /opt/nowhere/bin/activate\n"
    policy["partitions"]["long"]["node"] = "c1"
    rc, text = check(site(policy), "--submit-test-job")
    assert rc == 1
    found = failures(text)
    assert len(found) == 3  # debug on c1 and c2, long pinned to c1
    assert all("ended before its checks finished (a failing prologue?)" in f and
               "/opt/nowhere/bin/activate: No such file or directory" in f for f in found)


def test_test_user_without_an_account(site: Site) -> None:
    rc, text = check(site(), "--user", "nobody-here")
    assert rc == 1
    assert failures(text) == ["The test user 'nobody-here' has no account on this machine."]


def login_node_site(site: Site, lab: dict, **changes: Any) -> Path:
    ssh = lab["ssh"]
    policy = site.demo()
    policy["connection"] = {"mode": "login-node", "hub_api_url": policy["connection"]["hub_api_url"],
                            "ssh_host": ssh["host"], "ssh_port": ssh["port"],
                            "known_hosts": ssh["known_hosts"], "login_node_user": "carol",
                            "login_node_key": ssh["user_keys"]["carol"], **changes}
    return site(policy)


def test_login_node_mode_logs_in_and_opens_a_forward(site: Site, lab: dict) -> None:
    rc, text = check(login_node_site(site, lab))
    assert rc == 0, text
    assert f"The hub logs in to carol@{lab['ssh']['host']}:{lab['ssh']['port']} with " in text
    assert "a connection through a forward there reaches the login node's SSH server." in text, text


def test_login_node_with_the_wrong_host_key_or_an_open_key(site: Site, lab: dict,
                                                           tmp_path: Path) -> None:
    import subprocess

    other = tmp_path / "other_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    fields = (tmp_path / "other_host_key.pub").read_text().split()
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"[{lab['ssh']['host']}]:{lab['ssh']['port']} {fields[0]} {fields[1]}\n")
    rc, text = check(login_node_site(site, lab, known_hosts=str(wrong)))
    assert rc != 0
    [failure] = [f for f in failures(text) if "cannot open forwards through" in f]
    assert "Host key verification failed" in failure or "HOST IDENTIFICATION" in failure, failure

    key = tmp_path / "open_key"
    key.write_bytes(Path(lab["ssh"]["user_keys"]["carol"]).read_bytes())
    key.chmod(0o644)
    rc, text = check(login_node_site(site, lab, login_node_key=str(key)))
    assert rc != 0
    assert any("readable by others" in f for f in failures(text)), text


def test_login_node_that_refuses_forwarding_is_a_warning(site: Site, lab: dict,
                                                         tmp_path: Path) -> None:
    import subprocess

    key = tmp_path / "no_forwarding_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hpcgate-test-restrict",
                    "-f", str(key)], check=True)
    keys_file = Path(lab["dir"]) / "ssh" / "authorized_keys" / "carol"
    before = keys_file.read_text()
    keys_file.write_text(before + "restrict " + (tmp_path / "no_forwarding_key.pub").read_text())
    try:
        rc, text = check(login_node_site(site, lab, login_node_key=str(key)))
    finally:
        keys_file.write_text(before)
    assert f"The hub logs in to carol@{lab['ssh']['host']}:{lab['ssh']['port']} with " in text
    assert "got no answer: the login node may refuse forwarding for this account" in text
    assert not any("login node" in f for f in failures(text)), text
