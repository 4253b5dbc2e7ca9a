"""How the hub reaches its scheduler: one Scheduler and one JobWatcher per configuration.

Every spawner of a hub shares them, so the hub asks the scheduler once per tick for all jobs.
"""

from __future__ import annotations

import asyncio
from typing import Any

from traitlets import Bool, Dict, Float, Int, Unicode
from traitlets.config import LoggingConfigurable

from schedulers.backends import Scheduler, SlurmScheduler
from schedulers.pbs_backend import PbsScheduler
from schedulers.runners import LocalRunner, Runner, SSHRunner, SudoRunner
from schedulers.watcher import JobWatcher


class SchedulerConfig(LoggingConfigurable):
    """Which batch system, through which transport. Shared by every spawner of the hub."""

    kind = Unicode(
        "slurm",
        help="The batch system: 'slurm', or 'pbs' (PBS Professional / OpenPBS, qsub/qstat/qdel with "
             "`qstat -F json`; transports 'sudo', 'ssh' or 'local'; pass PBS_CONF_FILE in "
             "`environment` where PBS needs it).",
    ).tag(config=True)
    transport = Unicode(
        "sudo",
        help="How commands reach the scheduler: 'sudo' (the hub's host runs the client tools, "
             "as each user through sudo), 'ssh' (on a login node over SSH), 'rest' (Slurm's slurmrestd, "
             "in the hub's process), 'local' (the hub's own user, for single-user test setups)."
    ).tag(config=True)
    environment = Dict(
        {}, help="Environment the scheduler's commands and the job need, e.g. "
                 "{'SLURM_CONF': '/etc/slurm/slurm.conf'}. Passed explicitly: sudo drops it.",
    ).tag(config=True)
    ssh_host = Unicode("", help="Login node for transport 'ssh'.").tag(config=True)
    ssh_port = Int(22, help="SSH port of the login node.").tag(config=True)
    ssh_known_hosts = Unicode("", help="known_hosts file holding the login node's host key.").tag(
        config=True)
    ssh_key_template = Unicode(
        "", help="Private key to log in as a user, e.g. '/etc/hpcgate/keys/{user}_ed25519'.",
    ).tag(config=True)
    ssh_service_user = Unicode(
        "", help="Log in as this account and use sudo on the login node, instead of per-user keys.",
    ).tag(config=True)
    rest_url = Unicode("", help="slurmrestd URL for transport 'rest'.").tag(config=True)
    jwt_key_file = Unicode("", help="Slurm's JWT HS256 key (AuthAltParameters=jwt_key=...).").tag(
        config=True)
    jobcomp_file = Unicode(
        "", help="Slurm's jobcomp/filetxt log, if the hub can read it: the final state of jobs "
                 "that have left the controller."
    ).tag(config=True)
    use_sacct = Bool(False, help="Ask sacct for final states (needs slurmdbd accounting).").tag(
        config=True)
    fast_interval = Float(0.5, help="Seconds between scheduler queries while a job starts.").tag(
        config=True)
    slow_interval = Float(15.0, help="Seconds between queries when every job runs steadily.").tag(
        config=True)

    def apply_cluster(self, cluster: Any) -> None:
        """Take the scheduler and transport from a site policy's `cluster` section, which wins
        over these traits (jobcomp_file, use_sacct, SSH keys and intervals stay traits)."""
        self.kind, self.transport = cluster.scheduler, cluster.transport
        self.environment = {**self.environment, **cluster.environment}
        if cluster.ssh is not None:
            self.ssh_host, self.ssh_port = cluster.ssh.host, cluster.ssh.port
            self.ssh_known_hosts = cluster.ssh.known_hosts or self.ssh_known_hosts
        if cluster.rest is not None:
            self.rest_url = cluster.rest.url
            self.jwt_key_file = cluster.rest.jwt_key_file or self.jwt_key_file

    def key(self) -> tuple[Any, ...]:
        return (self.kind, self.transport, tuple(sorted(self.environment.items())), self.ssh_host,
                self.ssh_port, self.rest_url, self.jobcomp_file)

    def make_runner(self) -> Runner:
        if self.transport == "ssh":
            template = self.ssh_key_template
            return SSHRunner(self.ssh_host, self.ssh_port, known_hosts=self.ssh_known_hosts or None,
                             key_for_user=(lambda user: template.format(user=user)) if template
                             else None, env=self.environment,
                             service_user=self.ssh_service_user or None)
        if self.transport == "local":
            return LocalRunner(env=self.environment)
        return SudoRunner(env=self.environment)

    def make_scheduler(self) -> Scheduler:
        if self.kind == "pbs":
            if self.transport not in ("sudo", "ssh", "local"):
                raise ValueError(f"transport {self.transport!r} does not work with PBS: 'rest' is "
                                 "Slurm's slurmrestd; use 'sudo', 'ssh' or 'local'")
            return PbsScheduler(self.make_runner())
        if self.kind != "slurm":
            raise ValueError(f"scheduler kind {self.kind!r} is not supported: use 'slurm' or 'pbs'")
        if self.transport == "rest":
            from schedulers.slurmrest import SlurmRestScheduler

            return SlurmRestScheduler(self.rest_url, self.jwt_key_file,
                                      environment=self.environment,
                                      jobcomp_file=self.jobcomp_file or None)
        return SlurmScheduler(self.make_runner(), jobcomp_file=self.jobcomp_file or None,
                              use_sacct=self.use_sacct)


_shared: dict[tuple[Any, ...], tuple[Scheduler, Runner, JobWatcher, asyncio.AbstractEventLoop]] = {}


def shared(config: SchedulerConfig) -> tuple[Scheduler, Runner, JobWatcher]:
    """The hub's one scheduler, runner (for commands as a user) and watcher for `config`."""
    loop = asyncio.get_running_loop()
    entry = _shared.get(config.key())
    if entry is None or entry[3] is not loop:
        scheduler = config.make_scheduler()
        runner = getattr(scheduler, "runner", None) or config.make_runner()
        watcher = JobWatcher(scheduler, fast_interval=config.fast_interval,
                             slow_interval=config.slow_interval)
        entry = (scheduler, runner, watcher, loop)
        _shared[config.key()] = entry
    return entry[0], entry[1], entry[2]
