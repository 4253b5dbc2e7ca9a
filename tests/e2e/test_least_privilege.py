"""The hub runs as the unprivileged account hpcgate-hub, with exactly the sudoers rules `hpcgate
deploy-files` writes for its policy: the hub and its proxy are that account, and sudo lets it run
the listed commands as the policy's groups' members and refuses it everything else (root, another
account, another command, another environment, a shell)."""

from __future__ import annotations

import grp
import os
import pwd
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.admin.deploy import command_env
from gateway.lab.accounts import HUB_USER
from gateway.policy.load import load_policy
from tests.helpers.hub import Hub, running_hub

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def hub(lab: dict) -> Iterator[Hub]:
    with running_hub(lab, "leastpriv", ("alice",)) as h:
        yield h


def _uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])  # the real uid; all four are the same here
    raise AssertionError(f"no Uid line for {pid}")


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def as_hub(argv: list[str]) -> subprocess.CompletedProcess[str]:
    pw = pwd.getpwnam(HUB_USER)
    return subprocess.run(argv, capture_output=True, text=True, user=pw.pw_uid, group=pw.pw_gid,
                          extra_groups=[], env={"PATH": "/usr/bin:/bin"}, cwd="/", timeout=30)


def env_words(hub: Hub) -> list[str]:
    """`K=V` for the environment the runner passes, as sudoers pins it."""
    return [f"{k}={v}" for k, v in command_env(load_policy(str(hub.hub.policy_file))).items()]


def refused(res: subprocess.CompletedProcess[str]) -> bool:
    """sudo's own refusal (not the command's failure): with -n, a rule that does not match ends
    in "a password is required" or, when sudo can tell, "is not allowed to execute"."""
    return res.returncode == 1 and ("a password is required" in res.stderr
                                    or "is not allowed to execute" in res.stderr)


def test_the_hub_and_its_proxy_run_as_the_hub_account(hub: Hub) -> None:
    uid = pwd.getpwnam(HUB_USER).pw_uid
    assert hub.hub.proc is not None
    assert _uid_of(hub.hub.proc.pid) == uid
    proxy = hub.hub.proxy_pid()
    assert proxy and _uid_of(proxy) == uid
    assert all(_uid_of(p) == uid for p in _children(proxy))  # nginx's workers
    # `ps` says so too, as the issue asks of `make demo`.
    out = subprocess.run(["ps", "-o", "user=", "-p", str(hub.hub.proc.pid)], capture_output=True,
                         text=True)
    assert out.stdout.strip() == HUB_USER
    # The account is in no group of users, so it reads nothing of theirs by group.
    policy = load_policy(str(hub.hub.policy_file))
    assert not {g.gr_name for g in grp.getgrall() if HUB_USER in g.gr_mem} & set(policy.groups)
    assert os.stat(hub.hub.dir / "jupyterhub.sqlite").st_uid == uid


def test_the_installed_rules_are_the_generated_ones(hub: Hub) -> None:
    from gateway.admin.deploy import sudoers

    assert hub.hub.sudoers is not None
    text = hub.hub.sudoers.read_text()
    assert text == sudoers(load_policy(str(hub.hub.policy_file)), HUB_USER, str(hub.hub.policy_file))
    assert subprocess.run(["visudo", "-cf", str(hub.hub.sudoers)], capture_output=True).returncode == 0


def test_a_listed_command_runs_as_a_member(hub: Hub) -> None:
    res = as_hub(["sudo", "-n", "-u", "alice", "/usr/bin/env", *env_words(hub),
                  "tail", "-n", "1", "/etc/hostname"])
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""  # no warning of sudo's: every file in /etc/sudoers.d parses cleanly


@pytest.mark.parametrize("who", ["root", "nobody", "hpcgate-tunnel", HUB_USER])
def test_no_other_account(hub: Hub, who: str) -> None:
    """Root, and accounts outside the policy's groups, are refused (the hub itself as well:
    it never needs sudo to be itself)."""
    res = as_hub(["sudo", "-n", "-u", who, "/usr/bin/env", *env_words(hub),
                  "tail", "-n", "1", "/etc/hostname"])
    assert refused(res), (res.returncode, res.stderr)


def test_no_root_by_any_way(hub: Hub) -> None:
    for argv in (["sudo", "-n", "true"], ["sudo", "-n", "-s"], ["sudo", "-n", "-i"],
                 ["sudo", "-n", "-g", "root", "-u", "alice", "/usr/bin/env", *env_words(hub),
                  "tail", "-n", "1", "/etc/hostname"],
                 ["sudo", "-n", "-e", "/etc/hostname"]):
        res = as_hub(argv)
        assert refused(res), (argv, res.returncode, res.stderr)


def test_no_other_command_environment_or_shell(hub: Hub) -> None:
    env = env_words(hub)
    python = load_policy(str(hub.hub.policy_file)).job.python
    for argv in (
        ["/bin/sh", "-c", "id"],
        ["-s"],
        ["/usr/bin/env", *env, "sh", "-c", "id"],
        ["/usr/bin/env", *env, "squeue"],
        ["/usr/bin/env", *env, "sbatch", "--parsable", "--wrap=id"],  # the submit is exact
        ["/usr/bin/env", *env, python, "-c", "print(1)"],  # the interpreter: the launcher only
        ["/usr/bin/env", *env, "LD_PRELOAD=/tmp/x.so", "tail", "-n", "1", "/etc/hostname"],
        ["/usr/bin/env", "PATH=/tmp", *env[1:], "tail", "-n", "1", "/etc/hostname"],
        ["/usr/bin/env", *env[:1], "tail", "-n", "1", "/etc/hostname"],  # SLURM_CONF left out
        ["tail", "-n", "1", "/etc/hostname"],  # without the pinned environment
    ):
        res = as_hub(["sudo", "-n", "-u", "alice", *argv])
        assert refused(res), (argv, res.returncode, res.stderr)


def test_the_hub_cannot_read_a_users_files(hub: Hub, lab: dict) -> None:
    """Only through sudo, as the user, does the hub see a user's working directory."""
    workdir = lab["users"]["alice"]["workdir"]
    assert as_hub(["ls", workdir]).returncode != 0
