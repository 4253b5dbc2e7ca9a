"""What the gateway asks of a batch system, and what it hears back.

Plain data with no I/O: the scheduler modules build commands from a `JobRequest` and parse their
output into `JobStatus` records.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from schedulers.durations import format_words


class JobState(str, enum.Enum):
    """One small set of states every scheduler is mapped onto."""

    PENDING = "PENDING"
    HELD = "HELD"
    RUNNING = "RUNNING"
    SUSPENDED = "SUSPENDED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    # The scheduler could not be asked, or answered with something we do not know. Never "gone".
    UNKNOWN = "UNKNOWN"

    @property
    def is_final(self) -> bool:
        return self in _FINAL

    @property
    def is_waiting(self) -> bool:
        """Queued or held: the job has not started yet."""
        return self in (JobState.PENDING, JobState.HELD)


_FINAL = frozenset(
    {JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.TIMEOUT}
)


# Values that end up in a `#SBATCH`/`#PBS` line or an argv element. Anything else is refused by the
# builders: a newline in a partition name must never become a second directive.
SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}$")
SAFE_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


class UnsafeValue(ValueError):
    """A request field holds characters that must not reach a script or a command line."""


def check_name(field_name: str, value: str) -> str:
    if not SAFE_NAME.match(value):
        raise UnsafeValue(f"{field_name} {value!r} may only hold letters, digits and . _ + -")
    return value


def check_path(field_name: str, value: str) -> str:
    if not value.startswith("/") or any(c in value for c in "\n\r\0") or len(value) > 4096:
        raise UnsafeValue(f"{field_name} must be an absolute path on one line, not {value!r}")
    return value


@dataclass(frozen=True)
class JobRequest:
    """One batch job, in typed fields. Builders refuse values that are not safe to render."""

    script: str
    """Body of the job script (after the scheduler's header), run by bash."""
    name: str = "hpcgate"
    partition: str | None = None
    """Slurm partition or PBS queue; None means the scheduler's default."""
    account: str | None = None
    cpus: int = 1
    memory_mb: int | None = None
    gpus: int = 0
    walltime: timedelta | None = None
    workdir: str | None = None
    environment: dict[str, str] = field(default_factory=dict)
    """Exported inside the script. Never secrets: schedulers show a job's environment to others."""
    output: str | None = None
    """Path of the job's combined stdout/stderr."""
    node: str | None = None
    """Ask for one specific node (tests and site rules pinning a partition's node)."""
    extra_directives: tuple[str, ...] = ()
    """Site-written raw header lines (from the site policy, never from users)."""
    end_signal_seconds: int = 0
    """Ask the scheduler to signal the job (SIGUSR2 to the batch shell) this long before its
    walltime, so it can end cleanly; 0 for no such signal."""

    def walltime_seconds(self) -> int | None:
        return None if self.walltime is None else int(self.walltime.total_seconds())


@dataclass(frozen=True)
class JobStatus:
    """What the scheduler said about one job at one moment."""

    job_id: str
    state: JobState
    reason: str = ""
    """The reason in the scheduler's own words (Slurm's `Resources`, PBS's comment)."""
    reason_text: str = ""
    """The reason in plain words for a researcher."""
    reason_is_permanent: bool = False
    """The job will never start for this reason (limit exceeded, bad account): cancel it."""
    node: str | None = None
    node_address: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    estimated_start: datetime | None = None
    started: datetime | None = None
    """When the job started running (None while it waits)."""
    ends: datetime | None = None
    """When the scheduler will end it at the latest: its start plus its time limit, as the
    scheduler computes it (None while it waits, or when the scheduler does not say)."""
    raw: Any = None
    """The record as parsed from the scheduler, for logs and debugging."""

    @property
    def is_final(self) -> bool:
        return self.state.is_final


def format_duration(seconds: float) -> str:
    """Plain words, two parts at most: '30 minutes', '2 hours', '1 day 12 hours'.

    Kept for the spawner's messages; everything else calls `schedulers.durations.format_words`.
    """
    return format_words(seconds, parts=2)
