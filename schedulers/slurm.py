"""Slurm as pure functions: build argv and scripts, parse what the commands print.

The watcher's status query names our job ids: `squeue -h -t all -j ID,... -O <fields>` prints one
short line per job, so the bytes read and the hub's parsing do not grow with other people's jobs.
It costs two controller RPCs (REQUEST_JOB_INFO + REQUEST_PARTITION_INFO; with a single id
FED_INFO + JOB_INFO_SINGLE + PARTITION_INFO: three). `squeue --json` would cost one RPC but in
22.05 ignores -j/-u/--name and prints every job (31 MB with 10,000 jobs); it stays for the job
listing, and slurmrestd's GET /jobs returns the same document, so both share `parse_status`.
Nothing here runs a process.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from schedulers.durations import format_slurm, format_words
from schedulers.errors import CancelError, SchedulerUnavailable, SubmitError
from schedulers.model import JobRequest, JobState, JobStatus, UnsafeValue, check_name, check_path
from schedulers.script import export_lines

# -- submit ------------------------------------------------------------------------------------


def build_script(req: JobRequest) -> str:
    """The batch script: `#SBATCH` header from typed fields, then exports, then the body."""
    # --no-requeue: the server lives in the job's memory. Requeued after a node failure, the job
    # would wait in the queue again while the hub shows the server running; it must end instead.
    lines = ["#!/bin/bash", f"#SBATCH --job-name={check_name('job name', req.name)}",
             "#SBATCH --nodes=1", "#SBATCH --ntasks=1", "#SBATCH --no-requeue"]
    if req.partition:
        lines.append(f"#SBATCH --partition={check_name('partition', req.partition)}")
    if req.account:
        lines.append(f"#SBATCH --account={check_name('account', req.account)}")
    if not isinstance(req.cpus, int) or isinstance(req.cpus, bool) or req.cpus < 1:
        raise UnsafeValue(f"cpus must be a positive whole number, not {req.cpus!r}")
    lines.append(f"#SBATCH --cpus-per-task={req.cpus}")
    if req.memory_mb is not None:
        if not isinstance(req.memory_mb, int) or req.memory_mb < 1:
            raise UnsafeValue(f"memory must be a positive number of MB, not {req.memory_mb!r}")
        lines.append(f"#SBATCH --mem={req.memory_mb}M")
    if req.gpus:
        if not isinstance(req.gpus, int) or req.gpus < 0:
            raise UnsafeValue(f"gpus must be a whole number, not {req.gpus!r}")
        lines.append(f"#SBATCH --gres=gpu:{req.gpus}")
    if req.walltime is not None:
        lines.append(f"#SBATCH --time={format_slurm(req.walltime)}")
        if req.end_signal_seconds:
            # B: only the batch shell, which exec()s the launcher. Slurm may send it up to 60 s
            # early; it never sends it when the limit is shorter than the lead time.
            if not isinstance(req.end_signal_seconds, int) or not 0 < req.end_signal_seconds <= 65535:
                raise UnsafeValue(f"end signal lead must be 1-65535 s, not {req.end_signal_seconds!r}")
            lines.append(f"#SBATCH --signal=B:USR2@{req.end_signal_seconds}")
    if req.workdir:
        lines.append(f"#SBATCH --chdir={check_path('working directory', req.workdir)}")
    if req.output:
        out = check_path("output path", req.output)
        lines += [f"#SBATCH --output={out}", f"#SBATCH --error={out}"]
    if req.node:
        lines.append(f"#SBATCH --nodelist={check_name('node', req.node)}")
    for directive in req.extra_directives:
        if any(c in directive for c in "\0\n\r"):
            raise UnsafeValue(f"site directive {directive!r} spans lines")
        lines.append(f"#SBATCH {directive}")
    lines += export_lines(req.environment)
    lines.append(req.script.rstrip("\n"))
    return "\n".join(lines) + "\n"


def build_submit(req: JobRequest) -> tuple[list[str], str]:
    """argv for sbatch and the script it reads on stdin."""
    return ["sbatch", "--parsable"], build_script(req)


_SUBMIT_ERRORS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"Requested time limit is invalid", re.I),
     "The walltime you asked for is more than the partition allows."),
    (re.compile(r"Invalid account or account/partition combination", re.I),
     "You may not use this account on this partition."),
    (re.compile(r"Invalid partition name specified", re.I), "There is no such partition."),
    (re.compile(r"Memory required by task is not available", re.I),
     "The memory you asked for is more than a node of this partition has or allows."),
    (re.compile(r"Requested node configuration is not available", re.I),
     "No node of this partition has the cores, memory or GPUs you asked for."),
    (re.compile(r"More processors requested than permitted", re.I),
     "You asked for more cores than this partition allows."),
    (re.compile(r"Job violates accounting/QOS policy", re.I),
     "The request breaks a limit of your account or QOS (for example jobs per user)."),
    (re.compile(r"Invalid generic resource \(gres\) specification", re.I),
     "This partition has no such GPUs."),
    (re.compile(r"Invalid qos specification", re.I), "There is no such QOS, or you may not use it."),
    (re.compile(r"Node count specification invalid", re.I), "Too many nodes for this partition."),
    (re.compile(r"Access/permission denied", re.I), "You are not allowed to submit to this partition."),
]
_UNREACHABLE = re.compile(
    r"Unable to contact slurm controller|Socket timed out|Connection refused|"
    r"Could not establish a configuration source|Communication connection failure|"
    r"Slurm backup controller in standby mode|Zero Bytes were transmitted",
    re.I,
)


def _raw_error(stderr: str) -> str:
    return " ".join(line.strip() for line in stderr.strip().splitlines()[-3:])


def explain_submit_error(stderr: str, req: JobRequest | None = None,
                         partition_max_walltime: timedelta | None = None) -> str:
    """A sentence for a refused sbatch; with the request and the limit, a precise one."""
    raw = _raw_error(stderr)
    if (req is not None and req.walltime is not None and partition_max_walltime is not None
            and re.search(r"time limit", raw, re.I) and req.walltime > partition_max_walltime):
        return (f"Partition '{req.partition or 'default'}' allows at most "
                f"{format_words(partition_max_walltime, parts=2)}; you asked for "
                f"{format_words(req.walltime, parts=2)}.")
    for pattern, sentence in _SUBMIT_ERRORS:
        if pattern.search(raw):
            where = f" (partition '{req.partition}')" if req is not None and req.partition else ""
            return sentence[:-1] + where + "."
    return f"Slurm refused the job: {raw or 'no reason given'}"


def parse_submit(stdout: str, stderr: str, returncode: int, req: JobRequest | None = None,
                 partition_max_walltime: timedelta | None = None) -> str:
    """The job id from `sbatch --parsable` (`ID` or `ID;cluster`), or a SubmitError in words."""
    if returncode == 0:
        first = stdout.strip().splitlines()[0] if stdout.strip() else ""
        job_id = first.split(";")[0]
        if job_id.isdigit():
            return job_id
        raise SubmitError(f"sbatch printed no job id: {first!r}", stdout + stderr)
    if _UNREACHABLE.search(stderr):
        raise SchedulerUnavailable("The scheduler is not answering; try again in a minute.", stderr)
    raise SubmitError(explain_submit_error(stderr, req, partition_max_walltime), stderr)


# -- status ------------------------------------------------------------------------------------

_STATES: dict[str, JobState] = {
    "PENDING": JobState.PENDING,
    "CONFIGURING": JobState.PENDING,  # nodes booting for the job
    "REQUEUED": JobState.PENDING,
    "REQUEUE_FED": JobState.PENDING,
    "REQUEUE_HOLD": JobState.HELD,
    "RESV_DEL_HOLD": JobState.HELD,
    "SPECIAL_EXIT": JobState.HELD,
    "RUNNING": JobState.RUNNING,
    "COMPLETING": JobState.RUNNING,  # ending: the next query gives the final state
    "RESIZING": JobState.RUNNING,
    "SIGNALING": JobState.RUNNING,
    "STAGE_OUT": JobState.RUNNING,
    "SUSPENDED": JobState.SUSPENDED,
    "STOPPED": JobState.SUSPENDED,
    "COMPLETED": JobState.COMPLETED,
    "CANCELLED": JobState.CANCELLED,
    "REVOKED": JobState.CANCELLED,
    "FAILED": JobState.FAILED,
    "BOOT_FAIL": JobState.FAILED,
    "NODE_FAIL": JobState.FAILED,
    "OUT_OF_MEMORY": JobState.FAILED,
    "PREEMPTED": JobState.FAILED,
    "TIMEOUT": JobState.TIMEOUT,
    "DEADLINE": JobState.TIMEOUT,
}

_FINAL_STATE_WORDS = {
    "BOOT_FAIL": "The node failed to boot for the job.",
    "NODE_FAIL": "The node running the job failed.",
    "OUT_OF_MEMORY": "The job ran out of memory and was killed.",
    "PREEMPTED": "The job was preempted by a job with higher priority.",
    "DEADLINE": "The job reached its deadline.",
    "TIMEOUT": "The job reached its walltime and was stopped.",
    "CANCELLED": "The job was cancelled.",
    "REVOKED": "The job was revoked (it started on another cluster of the federation).",
}

# Pending reasons in plain words; True marks reasons that can never clear by waiting.
_REASONS: dict[str, tuple[str, bool]] = {
    "None": ("Queued: waiting for the scheduler's next pass", False),
    "Resources": ("Queued: waiting for free cores, memory or GPUs", False),
    "Priority": ("Queued: jobs with higher priority are ahead of yours", False),
    "Dependency": ("Queued: waiting for another job to finish", False),
    "BeginTime": ("Queued: the requested start time has not come yet", False),
    "JobHeldUser": ("Held by you: release the job to let it start", False),
    "JobHeldAdmin": ("Held by an administrator", False),
    "ReqNodeNotAvail": ("Queued: the nodes you need are down, drained or reserved", False),
    "NodeDown": ("Queued: a node the job needs is down", False),
    "PartitionDown": ("Queued: the partition is down; an administrator must bring it up", False),
    "PartitionInactive": ("Queued: the partition is inactive", False),
    "Reservation": ("Queued: waiting for its reservation to start", False),
    "Licenses": ("Queued: waiting for licenses", False),
    "Prolog": ("Starting: the node prologue is running", False),
    "launch failed requeued held": ("Held: the job failed to launch and was requeued", False),
    "JobArrayTaskLimit": ("Queued: the job array's task limit is reached", False),
    "AccountingPolicy": ("Queued: a limit of your account or QOS is reached", False),
    "PartitionTimeLimit": ("The walltime is more than the partition allows: it can never start",
                           True),
    "PartitionNodeLimit": ("The node count is outside the partition's limits: it can never start",
                           True),
    "PartitionConfig": ("The request does not fit this partition's configuration: it can never "
                        "start", True),
    "MaxMemPerLimit": ("The memory is more than the partition allows: it can never start", True),
    "InvalidAccount": ("The account is invalid: the job can never start", True),
    "AccountNotAllowed": ("This account may not use the partition: the job can never start", True),
    "InvalidQOS": ("The QOS is invalid: the job can never start", True),
    "QOSNotAllowed": ("This QOS may not be used here: the job can never start", True),
    "BadConstraints": ("No node matches the requested features or resources: it can never start",
                       True),
    "DependencyNeverSatisfied": ("The job depends on a job that failed: it can never start", True),
    "FrontEndDown": ("Queued: the front end node is down", False),
}
# Per-job maxima of an association or QOS never clear by waiting; aggregate (Grp) ones do.
_PERMANENT_PATTERN = re.compile(r"^(Assoc|QOS)Max\w*PerJob\w*$|^QOSMin\w+$|^\w*MaxWallDurationPerJob")
_LIMIT_PATTERN = re.compile(r"^(Assoc|QOS)(Grp|Max)\w+|^Max\w*Per(Account|User)\w*$")


def explain_reason(reason: str) -> tuple[str, bool]:
    """(plain words, can never clear) for a Slurm reason such as `Resources` or `QOSGrpCpuLimit`."""
    base = reason.split(",")[0].strip()
    if base == "Nodes required for job are DOWN":  # the description 22.05 shows for ReqNodeNotAvail
        return ("Queued: the nodes this job needs are down, drained or reserved for jobs in higher "
                "priority partitions", False)
    if base in _REASONS:
        return _REASONS[base]
    if _PERMANENT_PATTERN.match(base):
        return (f"The request exceeds a per-job limit ({base}): it can never start", True)
    if _LIMIT_PATTERN.match(base):
        return (f"Queued: a limit of your account or QOS is reached ({base})", False)
    return (f"Queued ({base})" if base else "Queued", False)


def decode_exit(wait_status: int | None) -> tuple[int | None, int | None]:
    """(exit code, signal) from a wait status as Slurm reports it (768 is exit 3)."""
    if wait_status is None:
        return None, None
    signal = wait_status & 0x7F
    return (wait_status >> 8) & 0xFF, (signal or None)


def _epoch(value: Any) -> datetime | None:
    # 22.05 gives plain integers; newer versions {"set": bool, "infinite": bool, "number": int}.
    if isinstance(value, Mapping):
        if not value.get("set", True) or value.get("infinite"):
            return None
        value = value.get("number")
    if isinstance(value, int) and value > 0:
        return datetime.fromtimestamp(value)
    return None


def _number(value: Any) -> int | None:
    if isinstance(value, Mapping):
        return value.get("number") if value.get("set", True) else None
    return value if isinstance(value, int) else None


def status_from_job(job: Mapping[str, Any], node_addresses: Mapping[str, str] | None = None
                    ) -> JobStatus:
    """One job record of `squeue --json` / slurmrestd into a JobStatus."""
    raw_state = job.get("job_state", "")
    if isinstance(raw_state, list):  # newer Slurm: ["PENDING", "REQUEUED", ...] (base state first)
        raw_state = raw_state[0] if raw_state else ""
    name = str(raw_state).upper()
    state = _STATES.get(name, JobState.UNKNOWN)
    reason = str(job.get("state_reason") or "")
    if state is JobState.PENDING and reason in ("JobHeldUser", "JobHeldAdmin"):
        state = JobState.HELD
    exit_code, signal = decode_exit(_number(job.get("exit_code")))
    if state.is_final:
        text = _FINAL_STATE_WORDS.get(name, "")
        if state is JobState.FAILED and name == "FAILED":
            text = (f"The job failed with exit code {exit_code}." if not signal
                    else f"The job was killed by signal {signal}.")
        elif state is JobState.COMPLETED:
            text = "The job finished."
        permanent = False
    elif state in (JobState.PENDING, JobState.HELD):
        text, permanent = explain_reason(reason)
    elif state is JobState.UNKNOWN:
        text, permanent = f"Slurm reports a state this gateway does not know: {name}", False
    else:
        text, permanent = ("Running" if name == "RUNNING" else name.capitalize()), False
    node = job.get("batch_host") or (job.get("nodes") or "").split(",")[0] or None
    estimated = _epoch(job.get("start_time")) if state.is_waiting else None
    started = None if state.is_waiting else _epoch(job.get("start_time"))
    ends = _epoch(job.get("end_time")) if started else None
    return JobStatus(
        job_id=str(job.get("job_id")),
        state=state,
        reason=reason if reason != "None" else "",
        reason_text=text,
        reason_is_permanent=permanent,
        node=node,
        node_address=(node_addresses or {}).get(node) if node else None,
        exit_code=exit_code if state.is_final else None,
        signal=signal if state.is_final else None,
        estimated_start=estimated,
        started=started,
        ends=ends,
        raw=dict(job),
    )


def build_list_jobs() -> list[str]:
    """Every job the controller holds, whoever owns it (`hpcgate jobs orphans`): one RPC."""
    return ["squeue", "--json"]


# What the watcher reads of each job, in this order. `-O FIELD:0|` prints the field unpadded and
# untruncated, then `|` (no value of these fields holds one); exit_code is the wait status (768 is
# exit 3). Every field exists in Slurm 22.05 and later.
STATUS_FIELDS: tuple[tuple[str, str], ...] = (
    ("JobID", "job_id"),
    ("State", "job_state"),
    ("Reason", "state_reason"),
    ("NodeList", "nodes"),
    ("BatchHost", "batch_host"),
    ("StartTime", "start_time"),
    ("EndTime", "end_time"),
    ("exit_code", "exit_code"),
)
_SEP = "|"
_JOB_ID = re.compile(r"^[0-9]+(_[0-9]+)?$")
# squeue's answer when the only id asked for has left the controller (or never was): an answer
# about that job, not a sign of a dead controller. With several ids it just leaves them out.
_NO_SUCH_JOB = re.compile(r"Invalid job id specified", re.I)


def build_status(job_ids: Iterable[str]) -> list[str]:
    """ONE squeue for every tracked job, naming them: `-t all` keeps jobs that ended within
    MinJobAge (their final state and reason); squeue prints nothing for the others."""
    ids = list(job_ids)
    for job_id in ids:
        if not _JOB_ID.match(job_id):
            raise UnsafeValue(f"job id {job_id!r} is not a Slurm job id")
    if not ids:
        raise ValueError("build_status needs at least one job id: without -j squeue lists every job")
    fields = ",".join(f"{name}:0{_SEP}" for name, _ in STATUS_FIELDS)
    return ["squeue", "-h", "-t", "all", "-j", ",".join(ids), "-O", fields]


def _text_epoch(value: str) -> int | None:
    # squeue prints local time without a zone (2026-12-06T19:33:31), or N/A / Unknown / None.
    try:
        return int(datetime.strptime(value, "%Y-%m-%dT%H:%M:%S").timestamp())
    except (ValueError, OverflowError, OSError):
        return None


def record_from_line(line: str) -> dict[str, Any] | None:
    """One line of `build_status` output as a `squeue --json`-like record, or None if it is not one."""
    values = line.split(_SEP)
    if len(values) == len(STATUS_FIELDS) + 1 and values[-1] == "":
        values = values[:-1]  # the separator after the last field
    if len(values) != len(STATUS_FIELDS) or not _JOB_ID.match(values[0].strip()):
        return None
    record: dict[str, Any] = {key: value.strip() for (_, key), value in zip(STATUS_FIELDS, values,
                                                                              strict=True)}
    record["job_state"] = (record["job_state"].split() or [""])[0]  # "CANCELLED by 5001"
    record["nodes"] = "" if record["nodes"] in ("(null)", "n/a") else record["nodes"]
    record["batch_host"] = "" if record["batch_host"] in ("(null)", "n/a", "None") else record["batch_host"]
    for key in ("start_time", "end_time"):
        record[key] = _text_epoch(record[key])
    code = record["exit_code"]
    record["exit_code"] = int(code) if code.isascii() and code.isdigit() else None
    return record


def parse_status_lines(stdout: str, stderr: str = "", returncode: int = 0,
                       node_addresses: Mapping[str, str] | None = None) -> dict[str, JobStatus]:
    """Our jobs from `build_status`'s output, keyed by job id.

    A failed or unreadable query raises SchedulerUnavailable: the caller marks its jobs UNKNOWN,
    never finished. A job the controller no longer holds is absent from a good answer, and
    "Invalid job id specified" (squeue's answer when the one id asked for is such a job) is a
    good, empty answer: the watcher looks absent jobs up in the final-state source.
    """
    if returncode != 0:
        lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
        if lines and all(_NO_SUCH_JOB.search(ln) for ln in lines) and not stdout.strip():
            return {}
        raise SchedulerUnavailable("The scheduler is not answering.", _raw_error(stderr) or stdout)
    result: dict[str, JobStatus] = {}
    unreadable = 0
    for line in stdout.splitlines():
        if not line.strip():
            continue
        record = record_from_line(line)
        if record is None:
            unreadable += 1
            continue
        status = status_from_job(record, node_addresses)
        result[status.job_id] = status
    if unreadable and not result:
        raise SchedulerUnavailable("The scheduler's answer could not be read.", stdout[:500])
    return result


def parse_status(stdout: str, stderr: str = "", returncode: int = 0,
                 node_addresses: Mapping[str, str] | None = None) -> dict[str, JobStatus]:
    """Every job in `squeue --json` output (or slurmrestd's GET /jobs), keyed by job id.

    A failed or unreadable query raises SchedulerUnavailable: the caller marks its jobs UNKNOWN,
    never finished. Jobs absent from a good answer are simply absent.
    """
    if returncode != 0:
        raise SchedulerUnavailable("The scheduler is not answering.", _raw_error(stderr) or stdout)
    try:
        doc = json.loads(stdout)
    except ValueError as err:
        raise SchedulerUnavailable("The scheduler's answer could not be read.", stdout[:500]) from err
    if not isinstance(doc, Mapping) or not isinstance(doc.get("jobs"), list):
        errors = doc.get("errors") if isinstance(doc, Mapping) else None
        raise SchedulerUnavailable("The scheduler answered without a job list.", str(errors or doc)[:500])
    if doc.get("errors"):
        # With the controller down, 22.05's `squeue --json` exits 0 and prints an empty job list
        # beside an error: reading that list as "no jobs" would declare every job finished.
        raise SchedulerUnavailable("The scheduler is not answering.", json.dumps(doc["errors"])[:500])
    result = {}
    for job in doc["jobs"]:
        if isinstance(job, Mapping) and "job_id" in job:
            status = status_from_job(job, node_addresses)
            result[status.job_id] = status
    return result


# -- final states of jobs that left the controller ----------------------------------------------

_JOBCOMP_FIELD = re.compile(r"(\w+)=(\S*)")


def parse_jobcomp(text: str, job_ids: Iterable[str] | None = None) -> dict[str, JobStatus]:
    """Final states from a `jobcomp/filetxt` log (one `Key=Value ...` line per finished job).

    It keeps the state and exit code but no reason; a later line for the same id (a requeue)
    wins.
    """
    wanted = set(job_ids) if job_ids is not None else None
    result: dict[str, JobStatus] = {}
    for line in text.splitlines():
        fields = dict(_JOBCOMP_FIELD.findall(line))
        job_id = fields.get("JobId")
        if not job_id or (wanted is not None and job_id not in wanted):
            continue
        name = fields.get("JobState", "").upper()
        state = _STATES.get(name, JobState.UNKNOWN)
        code, _, sig = fields.get("ExitCode", "").partition(":")
        exit_code = int(code) if code.isdigit() else None
        signal = int(sig) if sig.isdigit() and int(sig) else None
        nodes = fields.get("NodeList", "")
        text_words = _FINAL_STATE_WORDS.get(name, "The job finished." if name == "COMPLETED" else "")
        if name == "FAILED":
            text_words = f"The job failed with exit code {exit_code}."
        result[job_id] = JobStatus(job_id=job_id, state=state, reason=name, reason_text=text_words,
                                   node=nodes.split(",")[0] or None, exit_code=exit_code,
                                   signal=signal, raw=fields)
    return result


def build_sacct(job_ids: Iterable[str]) -> list[str]:
    """Final states where accounting (slurmdbd) exists."""
    return ["sacct", "-n", "-P", "-X", "-j", ",".join(job_ids), "-o", "JobID,State,ExitCode,NodeList,Reason"]


def parse_sacct(stdout: str) -> dict[str, JobStatus]:
    result = {}
    for line in stdout.splitlines():
        parts = line.split("|")
        if len(parts) < 5 or not parts[0].isdigit():
            continue
        job_id, state_field, exit_field, nodes, reason = parts[:5]
        name = state_field.split()[0].upper()  # "CANCELLED by 5001"
        code, _, sig = exit_field.partition(":")
        result[job_id] = JobStatus(
            job_id=job_id, state=_STATES.get(name, JobState.UNKNOWN), reason=reason,
            reason_text=_FINAL_STATE_WORDS.get(name, ""), node=nodes.split(",")[0] or None,
            exit_code=int(code) if code.isdigit() else None,
            signal=int(sig) if sig.isdigit() and int(sig) else None, raw=line)
    return result


# -- cancel and nodes --------------------------------------------------------------------------


def build_cancel(job_ids: Iterable[str]) -> list[str]:
    ids = [check_name("job id", j) for j in job_ids]
    return ["scancel", *ids]


def parse_cancel(stdout: str, stderr: str, returncode: int) -> None:
    """scancel of a job that already ended is not an error: the job is gone either way."""
    if returncode == 0:
        return
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    ended = re.compile(r"Job has already finished|Invalid job id specified|already completing", re.I)
    if lines and all(ended.search(ln) for ln in lines):
        return
    if _UNREACHABLE.search(stderr):
        raise SchedulerUnavailable("The scheduler is not answering; the job could not be cancelled yet.",
                                   stderr)
    raise CancelError(f"Slurm could not cancel the job: {_raw_error(stderr)}", stderr)


def build_node_addresses() -> list[str]:
    return ["sinfo", "-h", "-N", "-o", "%N %o"]


def parse_node_addresses(stdout: str) -> dict[str, str]:
    """Node name to NodeAddr: the hub cannot resolve names like `c2` on its own."""
    result = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            result[parts[0]] = parts[1]
    return result
