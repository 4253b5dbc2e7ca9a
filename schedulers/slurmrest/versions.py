"""What each slurmrestd OpenAPI version expects and answers, as pure functions.

v0.0.38 (Slurm 22.05): the job's properties beside a top-level `script`, `environment` an object,
plain integers for times and limits, and GET /jobs answers exactly like 22.05's `squeue --json`.
v0.0.40-v0.0.42 (Slurm 23.11-25.11): `script` inside `job`, `environment` a list of "K=V" strings,
limits as {"set", "infinite", "number"} objects, `job_state` a list, `exit_code` an object
({"status", "return_code", "signal"}), and from v0.0.41 `job_resources.nodes` an object.
The shapes come from SchedMD's own OpenAPI documents; tests/fixtures/slurmrest/PROVENANCE.md
names them.

The watcher's query is GET /jobs?update_time=T. In every version (22.05 to 25.11) slurmctld answers
it all or nothing: "no change" when no job of the whole cluster changed since T (its one global
last_job_update; v0.0.38 says so with HTTP 304, seen on the lab's 22.05; v0.0.40+, by SchedMD's
source, with 200, an empty list and a warning), otherwise every job, as without update_time.
`parse_jobs_answer` reads both.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from schedulers import slurm
from schedulers.errors import SchedulerUnavailable
from schedulers.model import JobRequest, JobStatus, UnsafeValue

DEFAULT_API_VERSION = "v0.0.38"
SUPPORTED_API_VERSIONS: tuple[str, ...] = ("v0.0.38", "v0.0.40", "v0.0.41", "v0.0.42")


def unsupported_version(version: str) -> str | None:
    """None for a version this gateway speaks, else a sentence saying which ones it does."""
    if version in SUPPORTED_API_VERSIONS:
        return None
    return (f"slurmrestd API version {version!r} is not supported; use one of "
            f"{', '.join(SUPPORTED_API_VERSIONS)} (Slurm 22.05-25.11)")


def _minutes(req: JobRequest) -> int | None:
    if req.walltime is None:
        return None
    return max(1, -(-int(req.walltime.total_seconds()) // 60))  # Slurm counts minutes: round up


def _no_val(number: int) -> dict[str, Any]:
    """A set, finite value in the {"set", "infinite", "number"} form of v0.0.40 and later."""
    return {"set": True, "infinite": False, "number": number}


def build_rest_job(req: JobRequest, environment: Mapping[str, str]) -> dict[str, Any]:
    """The JSON body of POST /slurm/v0.0.38/job/submit for a request."""
    if req.node:
        raise UnsafeValue("slurmrestd v0.0.38 cannot pin a job to a node; use the CLI transport")
    script = slurm.build_script(req)  # also validates every field
    job: dict[str, Any] = {
        "name": req.name,
        "cpus_per_task": req.cpus,
        "tasks": 1,
        "nodes": [1, 1],
        "environment": dict(environment),
        "requeue": False,  # as the script's --no-requeue (slurmrestd reads these, not #SBATCH)
    }
    if req.partition:
        job["partition"] = req.partition
    if req.account:
        job["account"] = req.account
    if req.memory_mb is not None:
        job["memory_per_node"] = req.memory_mb
    if req.gpus:
        job["gres"] = f"gpu:{req.gpus}"
    minutes = _minutes(req)
    if minutes is not None:
        job["time_limit"] = minutes
    if req.workdir:
        job["current_working_directory"] = req.workdir
    if req.output:
        job["standard_output"] = job["standard_error"] = req.output
    return {"script": script, "job": job}


def build_job_desc(req: JobRequest, environment: Mapping[str, str]) -> dict[str, Any]:
    """The JSON body of POST /slurm/v0.0.4x/job/submit (job_submit_req with one job_desc_msg)."""
    script = slurm.build_script(req)  # also validates every field
    job: dict[str, Any] = {
        "name": req.name,
        "script": script,
        "cpus_per_task": req.cpus,
        "tasks": 1,
        "minimum_nodes": 1,
        "maximum_nodes": 1,
        "environment": [f"{k}={v}" for k, v in environment.items()],
        "requeue": False,
    }
    if req.partition:
        job["partition"] = req.partition
    if req.account:
        job["account"] = req.account
    if req.memory_mb is not None:
        job["memory_per_node"] = _no_val(req.memory_mb)
    if req.gpus:
        job["tres_per_node"] = f"gres/gpu:{req.gpus}"
    minutes = _minutes(req)
    if minutes is not None:
        job["time_limit"] = _no_val(minutes)
    if req.workdir:
        job["current_working_directory"] = req.workdir
    if req.output:
        job["standard_output"] = job["standard_error"] = req.output
    if req.node:
        job["required_nodes"] = [req.node]  # already checked by build_script
    return {"job": job}


def errors_text(doc: Any) -> str:
    """The `errors` of an answer in one line (every version has the same error objects)."""
    errors = doc.get("errors") if isinstance(doc, Mapping) else None
    return "; ".join(str(e.get("description") or e.get("error")) for e in errors or []
                     if isinstance(e, Mapping))


def parse_submit(doc: Any) -> str | None:
    """The new job's id from a submit answer, or None. v0.0.40+ also nest it in `result`."""
    if not isinstance(doc, Mapping):
        return None
    job_id = doc.get("job_id")
    result = doc.get("result")
    if not job_id and isinstance(result, Mapping):
        job_id = result.get("job_id")
    return str(job_id) if job_id else None


def parse_nodes(doc: Any) -> dict[str, str]:
    """Node name to NodeAddr from GET /nodes (the same fields in every version)."""
    nodes = doc.get("nodes") if isinstance(doc, Mapping) else None
    return {n["name"]: n.get("address") or n["name"] for n in nodes or []
            if isinstance(n, Mapping) and n.get("name")}


def _jobs_of(doc: Any) -> list[Any]:
    if not isinstance(doc, Mapping) or not isinstance(doc.get("jobs"), list):
        raise SchedulerUnavailable("slurmrestd answered without a job list.",
                                   errors_text(doc) or str(doc)[:500])
    if doc.get("errors"):
        # An error beside a job list means the list cannot be trusted (controller unreachable).
        raise SchedulerUnavailable("The scheduler is not answering.", errors_text(doc)[:500])
    return doc["jobs"]


def _wait_status(exit_code: Any) -> int | None:
    """v0.0.40+'s exit_code object as the wait status 22.05 reported (768 is exit 3)."""
    if not isinstance(exit_code, Mapping):
        return exit_code if isinstance(exit_code, int) else None
    code = exit_code.get("return_code")
    if isinstance(code, Mapping):
        code = code.get("number") if code.get("set", True) else None
    signal = exit_code.get("signal") if isinstance(exit_code.get("signal"), Mapping) else {}
    sig = signal.get("id")
    if isinstance(sig, Mapping):
        sig = sig.get("number") if sig.get("set", True) else None
    if not isinstance(code, int) and not isinstance(sig, int):
        return None
    return ((code or 0) & 0xFF) << 8 | ((sig or 0) & 0x7F)


def _allocated_nodes(job: Mapping[str, Any]) -> str:
    resources = job.get("job_resources")
    if not isinstance(resources, Mapping):
        return ""
    nodes = resources.get("nodes")
    if isinstance(nodes, Mapping):  # v0.0.41+: {"count", "list", "allocation", ...}
        nodes = nodes.get("list")
    return nodes if isinstance(nodes, str) else ""


def normalize_job(job: Mapping[str, Any]) -> dict[str, Any]:
    """A v0.0.40+ job record in the shape `slurm.status_from_job` reads (22.05's squeue --json)."""
    flat = dict(job)
    flat["exit_code"] = _wait_status(job.get("exit_code"))
    if not flat.get("batch_host") and not flat.get("nodes"):
        flat["nodes"] = _allocated_nodes(job)
    return flat


def _status(job: Mapping[str, Any], normalize: Callable[[Mapping[str, Any]], Mapping[str, Any]],
            node_addresses: Mapping[str, str]) -> JobStatus:
    return dataclasses.replace(slurm.status_from_job(normalize(job), node_addresses), raw=dict(job))


def parse_jobs_v38(doc: Any, node_addresses: Mapping[str, str]) -> dict[str, JobStatus]:
    """GET /slurm/v0.0.38/jobs: the very document of 22.05's `squeue --json`."""
    return slurm.parse_status(json.dumps(doc), node_addresses=node_addresses)


def parse_jobs_v40(doc: Any, node_addresses: Mapping[str, str]) -> dict[str, JobStatus]:
    """GET /slurm/v0.0.4x/jobs into JobStatus records, keyed by job id."""
    result = {}
    for job in _jobs_of(doc):
        if isinstance(job, Mapping) and "job_id" in job:
            status = _status(job, normalize_job, node_addresses)
            result[status.job_id] = status
    return result


def _same(job: Mapping[str, Any]) -> Mapping[str, Any]:
    return job


@dataclass(frozen=True)
class Dialect:
    """One OpenAPI version: its paths and its pure builders and parsers."""

    version: str
    build_submit: Callable[[JobRequest, Mapping[str, str]], dict[str, Any]]
    parse_jobs: Callable[[Any, Mapping[str, str]], dict[str, JobStatus]]
    can_pin_node: bool
    normalize: Callable[[Mapping[str, Any]], Mapping[str, Any]] = _same
    """One job record in the shape `slurm.status_from_job` reads."""

    def path(self, endpoint: str) -> str:
        return f"slurm/{self.version}/{endpoint}"


_DIALECTS = {
    "v0.0.38": Dialect("v0.0.38", build_rest_job, parse_jobs_v38, can_pin_node=False),
    **{v: Dialect(v, build_job_desc, parse_jobs_v40, can_pin_node=True, normalize=normalize_job)
       for v in ("v0.0.40", "v0.0.41", "v0.0.42")},
}


# -- the watcher's query: what changed since T ------------------------------------------------------

# v0.0.40+'s words for "nothing changed" (src/plugins/openapi/slurmctld/jobs.c, resp_warn).
NO_CHANGE_WARNING = "No job changes since update_time"
# slurmctld's answer for an id it does not hold (ESLURM_INVALID_JOB_ID).
INVALID_JOB_ID = 2017


@dataclass(frozen=True)
class JobsAnswer:
    """GET /jobs?update_time=T: either nothing changed, or the whole job table (ours kept)."""

    changed: bool
    jobs: dict[str, JobStatus] = dataclasses.field(default_factory=dict)
    """The wanted jobs the listing holds; a wanted id missing here is not held by slurmctld."""
    packed_at: int | None = None
    """slurmctld's clock when it packed the listing (v0.0.40+ `last_update`); None in v0.0.38."""


def build_jobs_query(update_time: int | None) -> str:
    """The endpoint (below /slurm/VERSION/) of the watcher's query; None asks for every job."""
    if update_time is None:
        return "jobs"
    if isinstance(update_time, bool) or not isinstance(update_time, int) or update_time < 1:
        raise ValueError(f"update_time must be a positive Unix time, not {update_time!r}")
    return f"jobs?update_time={update_time}"


def _epoch_number(value: Any) -> int | None:
    """A time as plain integer (v0.0.38) or {"set", "infinite", "number"} (v0.0.40+)."""
    if isinstance(value, Mapping):
        if not value.get("set", True) or value.get("infinite"):
            return None
        value = value.get("number")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _warnings_text(doc: Any) -> str:
    warnings = doc.get("warnings") if isinstance(doc, Mapping) else None
    return "; ".join(str(w.get("description") or "") for w in warnings or [] if isinstance(w, Mapping))


def parse_jobs_answer(http_status: int, doc: Any, wanted: set[str], node_addresses: Mapping[str, str],
                      dia: Dialect) -> JobsAnswer:
    """The watcher's GET /jobs?update_time=T answer. Only `wanted` jobs become JobStatus records,
    so the hub's work after the JSON decode does not grow with other people's jobs. A failed or
    unreadable answer raises SchedulerUnavailable (the jobs become UNKNOWN, never gone)."""
    if http_status == 304:  # v0.0.38 (and the v0.0.38 plugin of later releases)
        return JobsAnswer(changed=False)
    if http_status != 200:
        raise SchedulerUnavailable("slurmrestd could not list jobs.",
                                   errors_text(doc) or f"HTTP {http_status}")
    if (isinstance(doc, Mapping) and not doc.get("errors") and not doc.get("jobs")
            and NO_CHANGE_WARNING in _warnings_text(doc)):
        return JobsAnswer(changed=False)
    found = {}
    for job in _jobs_of(doc):  # raises on errors beside the list
        if isinstance(job, Mapping) and str(job.get("job_id")) in wanted:
            status = _status(job, dia.normalize, node_addresses)
            found[status.job_id] = status
    return JobsAnswer(changed=True, jobs=found, packed_at=_epoch_number(doc.get("last_update")))


def parse_job_answer(http_status: int, doc: Any, job_id: str, node_addresses: Mapping[str, str],
                     dia: Dialect) -> JobStatus | None:
    """GET /job/ID: the job, or None when slurmctld no longer holds it (MinJobAge passed)."""
    errors = doc.get("errors") if isinstance(doc, Mapping) else None
    if any(isinstance(e, Mapping) and (e.get("error_number") == INVALID_JOB_ID
                                       or "Invalid job id" in str(e.get("error") or ""))
           for e in errors or []):
        return None
    if http_status != 200:
        raise SchedulerUnavailable(f"slurmrestd could not read job {job_id}.",
                                   errors_text(doc) or f"HTTP {http_status}")
    for job in _jobs_of(doc):
        if isinstance(job, Mapping) and str(job.get("job_id")) == job_id:
            return _status(job, dia.normalize, node_addresses)
    return None


def parse_controller_time(doc: Any) -> int | None:
    """slurmctld's clock from GET /diag (`statistics.req_time`), for v0.0.38's listings, which
    do not say when they were packed."""
    stats = doc.get("statistics") if isinstance(doc, Mapping) else None
    return _epoch_number(stats.get("req_time")) if isinstance(stats, Mapping) else None


def dialect(version: str) -> Dialect:
    """The dialect of a supported version; ValueError with the plain sentence otherwise."""
    problem = unsupported_version(version)
    if problem:
        raise ValueError(problem)
    return _DIALECTS[version]
