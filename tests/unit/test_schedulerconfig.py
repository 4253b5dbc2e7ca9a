"""The site policy's cluster section decides the hub's scheduler and transport."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest

from gateway.hub.scheduling import SchedulerConfig
from gateway.policy import load_policy
from schedulers.backends import SlurmScheduler
from schedulers.pbs_backend import PbsScheduler
from schedulers.runners import SSHRunner, SudoRunner

SITES = Path(str(resources.files("site_configs")))


def test_pbs_site_gets_the_pbs_backend_with_its_environment() -> None:
    config = SchedulerConfig(environment={"EXTRA": "1"})
    config.apply_cluster(load_policy(SITES / "pbs-site.yaml").cluster)
    assert (config.kind, config.transport) == ("pbs", "sudo")
    assert config.environment == {"EXTRA": "1", "PBS_CONF_FILE": "/etc/pbs.conf"}
    scheduler = config.make_scheduler()
    assert isinstance(scheduler, PbsScheduler)
    assert isinstance(scheduler.runner, SudoRunner)


def test_university_site_runs_slurm_over_ssh_on_its_login_node() -> None:
    config = SchedulerConfig(jobcomp_file="/var/log/slurm/jobcomp.log")
    config.apply_cluster(load_policy(SITES / "university-slurm.yaml").cluster)
    assert (config.kind, config.transport) == ("slurm", "ssh")
    assert (config.ssh_host, config.ssh_port) == ("login1.hpc.example.edu", 22)
    assert config.ssh_known_hosts == "/etc/hpcgate/ssh_known_hosts"
    assert config.jobcomp_file == "/var/log/slurm/jobcomp.log"  # not in the policy: the trait stays
    scheduler = config.make_scheduler()
    assert isinstance(scheduler, SlurmScheduler) and isinstance(scheduler.runner, SSHRunner)


def test_rest_transport_with_pbs_is_refused_in_words() -> None:
    config = SchedulerConfig(kind="pbs", transport="rest")
    with pytest.raises(ValueError, match="slurmrestd"):
        config.make_scheduler()
