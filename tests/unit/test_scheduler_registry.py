"""The site policy's cluster section decides the hub's scheduler, transport, PATH and timeout."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from gateway.hub.scheduling import scheduler_settings
from gateway.policy import load_policy
from schedulers.backends import SlurmScheduler
from schedulers.pbs_backend import PbsScheduler
from schedulers.registry import ADAPTERS, make_runner, make_scheduler
from schedulers.runners import SSHRunner, SudoRunner

SITES = Path(str(resources.files("site_configs")))


def test_pbs_site_gets_the_pbs_adapter_with_its_path_environment_and_timeout() -> None:
    settings = scheduler_settings(load_policy(SITES / "pbs-site.yaml").cluster)
    assert (settings.kind, settings.transport) == ("pbs", "sudo")
    scheduler = make_scheduler(settings)
    assert isinstance(scheduler, PbsScheduler) and isinstance(scheduler.runner, SudoRunner)
    # qsub lives in /opt/pbs/bin there: the runner's PATH is the policy's command_path.
    assert scheduler.runner.env["PATH"].split(":")[0] == "/opt/pbs/bin"
    assert scheduler.runner.env["PBS_CONF_FILE"] == "/etc/pbs.conf"
    assert scheduler.runner.timeout == settings.command_timeout


def test_university_site_runs_slurm_over_ssh_on_its_login_node() -> None:
    settings = scheduler_settings(load_policy(SITES / "university-slurm.yaml").cluster)
    assert (settings.kind, settings.transport) == ("slurm", "ssh")
    runner = make_runner(settings)
    assert isinstance(runner, SSHRunner)
    assert (runner.host, runner.port, runner.known_hosts) == (
        "login1.hpc.example.edu", 22, "/etc/hpcgate/ssh_known_hosts")
    assert isinstance(make_scheduler(settings, runner), SlurmScheduler)


def test_every_kind_names_its_directive_prefix_and_transports() -> None:
    assert ADAPTERS["slurm"].directive_prefix == "#SBATCH "
    assert ADAPTERS["pbs"].directive_prefix == "#PBS "
    assert "rest" in ADAPTERS["slurm"].transports and "rest" not in ADAPTERS["pbs"].transports
