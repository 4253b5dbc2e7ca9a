"""One adapter per batch system, registered by kind, and the settings that build it.

`SchedulerSettings` is what a site says about its scheduler (the gateway fills it from the site
policy's `cluster` section); `make_scheduler` turns it into the adapter for its kind, with the
runner for its transport. Adding a batch system means a module in this package and one line in
`ADAPTERS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from schedulers.runners import DEFAULT_PATH, LocalRunner, Runner, SSHRunner, SudoRunner


@dataclass(frozen=True)
class SchedulerSettings:
    """Everything needed to reach one cluster's scheduler."""

    kind: str = "slurm"
    transport: str = "sudo"
    """local (the caller's own user), sudo (as each user on this host), ssh (on a login node),
    rest (slurmrestd, Slurm only)."""
    environment: Mapping[str, str] = field(default_factory=dict)
    command_path: str = DEFAULT_PATH
    command_timeout: float = 30.0
    ssh_host: str = ""
    ssh_port: int = 22
    ssh_known_hosts: str | None = None
    ssh_key_template: str | None = None
    """Private key to log in as a user, e.g. /etc/hpcgate/keys/{user}_ed25519."""
    ssh_service_user: str | None = None
    rest_url: str = ""
    rest_api_version: str = "v0.0.38"
    jwt_key_file: str | None = None
    jobcomp_file: str | None = None
    use_sacct: bool = False

    @property
    def command_env(self) -> dict[str, str]:
        """What every scheduler command runs with: the site's PATH, then its variables."""
        return {"PATH": self.command_path, **self.environment}


@dataclass(frozen=True)
class Adapter:
    """One batch system: how to build it, and what the rest of the gateway must know of it."""

    build: Callable[[SchedulerSettings, Runner], Any]
    directive_prefix: str
    """How its batch scripts' header lines start ('#SBATCH ', '#PBS ')."""
    transports: tuple[str, ...]
    queue_word: str = "partition"


def _slurm(settings: SchedulerSettings, runner: Runner) -> Any:
    if settings.transport == "rest":
        from schedulers.slurmrest import SlurmRestScheduler

        return SlurmRestScheduler(settings.rest_url, settings.jwt_key_file or "",
                                  api_version=settings.rest_api_version,
                                  environment=dict(settings.command_env),
                                  jobcomp_file=settings.jobcomp_file,
                                  command_timeout=settings.command_timeout)
    from schedulers.backends import SlurmScheduler

    return SlurmScheduler(runner, jobcomp_file=settings.jobcomp_file, use_sacct=settings.use_sacct)


def _pbs(settings: SchedulerSettings, runner: Runner) -> Any:
    from schedulers.pbs_backend import PbsScheduler

    return PbsScheduler(runner)


ADAPTERS: dict[str, Adapter] = {
    "slurm": Adapter(_slurm, "#SBATCH ", ("local", "sudo", "ssh", "rest")),
    "pbs": Adapter(_pbs, "#PBS ", ("local", "sudo", "ssh"), queue_word="queue"),
}


def make_runner(settings: SchedulerSettings) -> Runner:
    """The runner for the settings' transport (rest: a sudo runner, for the job log and files)."""
    env, timeout = settings.command_env, settings.command_timeout
    if settings.transport == "ssh":
        template = settings.ssh_key_template
        return SSHRunner(settings.ssh_host, settings.ssh_port, known_hosts=settings.ssh_known_hosts,
                         key_for_user=(lambda user: template.format(user=user)) if template else None,
                         env=env, service_user=settings.ssh_service_user, timeout=timeout)
    if settings.transport == "local":
        return LocalRunner(env=env, timeout=timeout)
    return SudoRunner(env=env, timeout=timeout)


def make_scheduler(settings: SchedulerSettings, runner: Runner | None = None) -> Any:
    """The adapter for `settings.kind`; ValueError with a sentence for an unknown kind or a
    transport that kind does not have."""
    adapter = ADAPTERS.get(settings.kind)
    if adapter is None:
        raise ValueError(f"scheduler {settings.kind!r} is not supported: use "
                         f"{' or '.join(repr(k) for k in ADAPTERS)}")
    if settings.transport not in adapter.transports:
        raise ValueError(f"transport {settings.transport!r} does not work with {settings.kind}: use "
                         f"{', '.join(repr(t) for t in adapter.transports)}")
    return adapter.build(settings, runner or make_runner(settings))
