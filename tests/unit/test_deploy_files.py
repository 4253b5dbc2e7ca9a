"""`hpcgate deploy-files`: the shipped examples are the generator's output, sudo and systemd accept
what it writes, and the sudoers rules name exactly the commands the hub runs as a user."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.admin.deploy import (
    SCHEDULER_USER_COMMANDS,
    DeployError,
    Layout,
    deploy_files,
    sudoers,
    user_commands,
)
from gateway.cli import main as hpcgate
from gateway.policy.load import load_policy
from gateway.policy.model import SitePolicy

ROOT = Path(__file__).resolve().parents[2]
SITES = sorted(p for p in (ROOT / "site_configs").glob("*.yaml"))
SHIPPED = ROOT / "site_configs" / "deploy"


def _policy(path: Path) -> SitePolicy:
    return load_policy(str(path))


@pytest.mark.parametrize("site", SITES, ids=lambda p: p.stem)
def test_shipped_examples_are_the_generators_output(site: Path) -> None:
    made = deploy_files(_policy(site), Layout(policy_name=site.name), site.name)
    shipped = SHIPPED / site.stem
    assert sorted(made) == sorted(p.name for p in shipped.iterdir()), \
        f"site_configs/deploy/{site.stem}: run `make deploy-examples`"
    for name, text in made.items():
        assert (shipped / name).read_text() == text, f"site_configs/deploy/{site.stem}/{name} is out of date"


@pytest.mark.parametrize("site", SITES, ids=lambda p: p.stem)
def test_sudo_and_systemd_accept_the_files(site: Path, tmp_path: Path) -> None:
    files = deploy_files(_policy(site), Layout(policy_name=site.name), site.name)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    if "sudoers" in files:
        out = subprocess.run(["visudo", "-cf", str(tmp_path / "sudoers")], capture_output=True,
                             text=True)
        assert out.returncode == 0, out.stdout + out.stderr
    compile(files["jupyterhub_config.py"], "jupyterhub_config.py", "exec")
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing (Debian's systemd package)")
    unit = tmp_path / "hpcgate-hub.service"
    out = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    # verify also checks that ExecStart exists: the example venv is not installed here.
    problems = [line for line in out.stderr.splitlines()
                if "Failed" in line or "Unknown" in line or "ignoring" in line.lower()]
    problems = [p for p in problems if "/bin/jupyterhub" not in p and "Command " not in p]
    assert not problems, out.stderr
    assert "User=hpcgate-hub\n" in unit.read_text()


def test_sudoers_names_exactly_the_policys_commands_environment_and_groups() -> None:
    policy = _policy(ROOT / "site_configs" / "demo.yaml")
    text = sudoers(policy, "hpcgate-hub")
    rules = [line.strip().rstrip(", \\") for line in text.splitlines()
             if line.strip().startswith("/usr/bin/env")]
    env = ("PATH\\=/usr/local/bin\\:/usr/bin\\:/bin\\:/usr/local/sbin\\:/usr/sbin\\:/sbin "
           "SLURM_CONF\\=/var/tmp/hpcgate-lab/etc/slurm.conf")
    assert rules == [f"/usr/bin/env {env} {cmd}" for cmd in (
        "sbatch --parsable", "scancel *",
        "/opt/hpcgate/venv/bin/python -m gateway.job.launcher --write *",
        "/opt/hpcgate/venv/bin/python -m gateway.depots.size --time-limit *",
        "tail -n * *", "tail -c * *")]
    assert "\nhpcgate-hub ALL = (%hpc-users, %hub-admins, %soundscape-lab, !root) NOPASSWD: \\\n" in text
    assert "_Alias" not in text  # two hubs' files side by side must not define one alias twice
    assert "sh " not in text and "bash" not in text and "ALL)" not in text


def test_the_command_list_follows_the_adapters() -> None:
    """What the adapters submit and cancel with is what sudoers allows."""
    from schedulers import pbs, slurm

    assert slurm.build_cancel(["7"])[0] == SCHEDULER_USER_COMMANDS["slurm"][1][0]
    assert pbs.build_cancel(["7.server"])[0] == SCHEDULER_USER_COMMANDS["pbs"][1][0]
    import inspect

    assert '["sbatch", "--parsable"]' in inspect.getsource(slurm.build_submit)
    assert '["qsub"]' in inspect.getsource(pbs.build_qsub)


def test_rest_transport_needs_no_scheduler_commands_but_the_job_files() -> None:
    import dataclasses

    policy = _policy(ROOT / "site_configs" / "demo.yaml")
    rest = dataclasses.replace(policy, cluster=dataclasses.replace(policy.cluster, transport="rest"))
    assert [c[0] for c in user_commands(rest)] == [policy.job.python] * 2 + ["tail", "tail"]


def test_a_value_sudoers_cannot_pin_is_refused() -> None:
    import dataclasses

    policy = _policy(ROOT / "site_configs" / "demo.yaml")
    spaced = dataclasses.replace(policy, cluster=dataclasses.replace(
        policy.cluster, environment={"SLURM_CONF": "/etc/slurm conf/slurm.conf"}))
    with pytest.raises(DeployError, match="cannot be pinned in sudoers"):
        sudoers(spaced, "hpcgate-hub")
    wild = dataclasses.replace(policy, cluster=dataclasses.replace(
        policy.cluster, environment={"SLURM_CONF": "/etc/slurm/*.conf"}))
    with pytest.raises(DeployError):
        sudoers(wild, "hpcgate-hub")


def test_command_writes_the_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert hpcgate(["deploy-files", "--policy", str(ROOT / "site_configs" / "pbs-site.yaml"),
                    "--out", str(out), "--etc", "/srv/hpcgate/", "--public-url",
                    "https://nb.example.edu:8443/"]) == 0
    assert (out / "sudoers").stat().st_mode & 0o777 == 0o440
    config = (out / "jupyterhub_config.py").read_text()
    assert "configure(c, '/srv/hpcgate/pbs-site.yaml')" in config
    assert "AmbientCapabilities" not in (out / "hpcgate-hub.service").read_text()
    assert "bind_url = 'https://nb.example.edu:8443/'" in config
