"""A researcher's sessions as the portal shows them: one card per server, and the ended ones.

`describe()` turns a spawner (what JupyterHub knows) and the watcher's last status of its job
(what the scheduler said) into one JSON-safe dict: the state in words, the job, where it runs,
what it asked for, and the time left taken from the scheduler's own end time. The sessions page,
its API and the operator view all read this one description.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from schedulers.durations import format_words
from schedulers.model import JobState, JobStatus

HISTORY_KEPT = 5
# Slurm's reasons that may mean "no node of the partition can run anything now": worth asking
# sinfo for the admins' drain or down reason, which says more than the reason code.
# 22.05 also puts its description in the reason once the scheduler has looked at the job:
# "Nodes required for job are DOWN, DRAINED or reserved for jobs in higher priority partitions".
_NODE_REASONS = {"Resources", "ReqNodeNotAvail", "NodeDown", "PartitionDown", "PartitionInactive",
                 "Nodes required for job are DOWN"}


def _epoch(moment: datetime | None) -> float | None:
    return moment.timestamp() if moment is not None else None


def request_summary(fields: dict[str, Any]) -> dict[str, Any]:
    """What a job asked for, JSON-safe (from the validated form: JobRequest's keyword arguments)."""
    walltime = fields.get("walltime")
    return {"partition": fields.get("partition"), "account": fields.get("account"),
            "cpus": fields.get("cpus"), "memory_mb": fields.get("memory_mb"),
            "gpus": fields.get("gpus") or 0, "node": fields.get("node"),
            "walltime_seconds": int(walltime.total_seconds()) if walltime is not None else None}


def how_it_ended(status: JobStatus | None, stopped_here: bool, ending: str = "",
                 fallback: tuple[str, str] | None = None) -> tuple[str, str]:
    """(kind, sentence) for a session's end: time-limit, stopped, cancelled, node-failure,
    out-of-memory, exit-code, finished, `fallback` (the hub's own reason, for a job the
    scheduler has not seen end yet) or unknown."""
    if ending == "time-limit" or (status is not None and status.state is JobState.TIMEOUT):
        return "time-limit", "Reached its time limit."
    if stopped_here:
        return "stopped", "Stopped from the portal."
    if status is None or not status.is_final:
        return fallback or ("unknown", "Ended; the scheduler did not say how.")
    raw_state = str((status.raw or {}).get("job_state") or "").upper() if isinstance(
        status.raw, dict) else ""
    if raw_state in ("NODE_FAIL", "BOOT_FAIL"):
        return "node-failure", status.reason_text or "The node running the job failed."
    if raw_state == "OUT_OF_MEMORY":
        return "out-of-memory", status.reason_text or "The job ran out of memory and was killed."
    if status.state is JobState.CANCELLED:
        return "cancelled", "The job was cancelled outside the portal."
    if status.state is JobState.COMPLETED and not status.exit_code:
        return "finished", "The server shut down (exit code 0)."
    if status.signal:
        return "exit-code", f"Killed by signal {status.signal}."
    return "exit-code", f"Failed with exit code {status.exit_code if status.exit_code is not None else '?'}."


# How close to its walltime a job that ended on its own counts as ended by it: the end signal
# (policy job.end_signal, 90 s by default) comes up to 60 s early, and the launcher's own report of
# it can be lost on a loaded hub or a dropped tunnel. Longer leads rely on that report.
NEAR_LIMIT_SECONDS = 180


def ended_near_limit(spawner: Any, status: JobStatus | None, now: float) -> bool:
    """Whether the job ended on its own within NEAR_LIMIT_SECONDS of its walltime: the
    scheduler's signal ended it."""
    walltime = (spawner.job_request or {}).get("walltime_seconds")
    if status is None or status.started is None or not walltime:
        return False
    return now >= status.started.timestamp() + walltime - NEAR_LIMIT_SECONDS


def history_entry(spawner: Any, status: JobStatus | None, stopped_here: bool,
                  fallback: tuple[str, str] | None = None) -> dict[str, Any]:
    """One ended session, as kept in the spawner's state."""
    now = time.time()
    ending = spawner.ending
    if not ending and not stopped_here and ended_near_limit(spawner, status, now):
        ending = "time-limit"
    kind, words = how_it_ended(status, stopped_here, ending, fallback)
    started = _epoch(status.started) if status is not None else None
    return {"job_id": spawner.job_id, "request": spawner.job_request or {},
            "options": dict(spawner.user_options or {}),
            "node": status.node if status is not None else None,
            "submitted": spawner.submitted_at or None, "started": started, "ended": now,
            "ran_seconds": int(now - started) if started else 0, "end_kind": kind, "end_text": words}


def remember_end(spawner: Any, status: JobStatus | None, stopped_here: bool,
                 fallback: tuple[str, str] | None = None) -> None:
    """Keep the ended session at the top of the spawner's history (once per job)."""
    if not spawner.job_id or any(h.get("job_id") == spawner.job_id for h in spawner.history):
        return
    entry = history_entry(spawner, status, stopped_here, fallback)
    spawner.history = [entry, *spawner.history][:HISTORY_KEPT]


def queue_words_need_nodes(status: JobStatus) -> bool:
    """Whether a waiting job's reason could mean its partition's nodes are all unavailable."""
    return status.state.is_waiting and status.reason.split(",")[0] in _NODE_REASONS


async def queue_text(scheduler: Any, status: JobStatus, request: dict[str, Any] | None) -> str:
    """The most specific words for a queued job: the admins' drain or down reason when no node
    of its partition can take it, else the scheduler's reason in words, with the expected start."""
    text = status.reason_text or "Queued"
    partition = (request or {}).get("partition")
    obstacle = getattr(scheduler, "partition_obstacle", None)
    if partition and obstacle is not None and queue_words_need_nodes(status):
        found = await obstacle(partition, (request or {}).get("node"))
        if found:
            text = f"Queued: {found}"
    if status.estimated_start:
        text += f" (expected start {status.estimated_start:%Y-%m-%d %H:%M})"
    return text


def _state(spawner: Any, status: JobStatus | None) -> str:
    if spawner.pending == "stop":
        return "stopping"
    if status is not None and status.is_final:
        return "ended"
    if spawner.ready:
        return "running"
    # "check": a restarted hub waits for the report of a job it found queued or starting.
    if spawner.pending in ("spawn", "check"):
        if status is not None and status.state.is_waiting:
            return "queued"
        return "starting"
    return "stopped"


_STATE_WORDS = {"stopping": "Stopping", "running": "Running", "starting": "Starting",
                "queued": "Queued", "ended": "Ended", "stopped": "Not running"}


async def describe(spawner: Any, watcher: Any | None, scheduler: Any | None,
                   warnings: tuple[int, ...] = ()) -> dict[str, Any]:
    """One server of a user as a card: see the module's docstring. `warnings` are the policy's
    seconds-left thresholds; `warning` is set once the time left is below the largest."""
    status = watcher.latest(spawner.job_id) if (watcher is not None and spawner.job_id) else None
    state = _state(spawner, status)
    request = spawner.job_request or {}
    now = time.time()
    ends = _epoch(status.ends) if status is not None and state in ("running", "starting") else None
    left = max(0, int(ends - now)) if ends else None
    text = _STATE_WORDS[state]
    if state == "queued" and status is not None and scheduler is not None:
        text = await queue_text(scheduler, status, request)
    elif state == "starting" and status is not None and status.node:
        text = f"Starting JupyterLab on {status.node}"
    elif state == "running" and status is not None and status.node:
        text = f"Running on {status.node}"
    elif state == "ended" and status is not None:
        text = how_it_ended(status, False, spawner.ending)[1]
    warning = None
    if left is not None and warnings and left <= max(warnings):
        warning = (f"{format_words(left)} left before the walltime ends this session. Save your "
                   "work; it stops at the limit.")
    user = spawner.user
    return {
        "user": user.name, "name": spawner.name, "state": state, "state_text": text,
        "job_id": spawner.job_id or None, "request": request,
        "node": status.node if status is not None else None,
        "submitted": spawner.submitted_at or None,
        "started": _epoch(status.started) if status is not None else None,
        "ends": ends, "seconds_left": left, "warning": warning, "warnings": list(warnings),
        "expected_start": _epoch(status.estimated_start) if status is not None else None,
        "connection": spawner.connection.mode if spawner.job_id else None,
        "url": user.server_url(spawner.name) if spawner.ready else None,
        "options": dict(spawner.user_options or {}),
        "ending": spawner.ending or None,
        "history": list(spawner.history),
    }
