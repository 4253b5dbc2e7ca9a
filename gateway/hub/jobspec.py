"""What the site policy says about one server's job, as pure functions of the policy.

The spawner calls these; the schema test (tests/unit/test_policy_reaches.py) calls them too, to
prove each `job` field reaches the job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.policy.model import SitePolicy
from schedulers.registry import ADAPTERS


@dataclass(frozen=True)
class JobSetup:
    python: str
    prologue: str
    environment: dict[str, str]
    """Exported in the job: the scheduler's variables (SLURM_CONF), the job's own, and PATH."""
    directives: tuple[str, ...]
    """The policy's raw header lines without their "#SBATCH "/"#PBS " (the builder adds it)."""
    workdir: str
    server_dir: str
    """Where the server's launch file and job log live."""
    report_timeout: float
    end_signal: int
    """Seconds before the walltime the job is asked to end cleanly (0: never)."""
    walltime_warnings: tuple[int, ...]
    """Seconds left at which the user is warned, largest first."""
    activity_record: bool
    """Whether the server runs the activity recorder (policy activity.record)."""
    activity_code: str
    """What the server's activity recorder keeps of executed code (policy activity.code)."""

    def launch_activity(self) -> dict[str, Any]:
        """The launch file's `activity` entry (gateway.job.launcher.activity_args reads it)."""
        return {"record": self.activity_record, "code": self.activity_code}


def warning_seconds(policy: SitePolicy) -> tuple[int, ...]:
    """The policy's walltime warnings as seconds left, largest first, each once."""
    return tuple(sorted({int(w.total_seconds()) for w in policy.job.walltime_warnings},
                        reverse=True))


def job_setup(policy: SitePolicy, user: str, home: str, server: str) -> JobSetup:
    job = policy.job
    prefix = ADAPTERS[policy.cluster.scheduler].directive_prefix
    workdir = job.workdir.format(user=user, home=home)
    return JobSetup(
        python=job.python, prologue=job.prologue,
        environment={**policy.cluster.environment, **job.environment, "PATH": job.path},
        directives=tuple(d.removeprefix(prefix).strip() for d in job.extra_directives
                         if d.startswith(prefix)),
        workdir=workdir, server_dir=f"{workdir}/.hpcgate/servers/{server or 'default'}",
        report_timeout=job.report_timeout, end_signal=int(job.end_signal),
        walltime_warnings=warning_seconds(policy),
        activity_record=policy.activity.record, activity_code=policy.activity.code)
