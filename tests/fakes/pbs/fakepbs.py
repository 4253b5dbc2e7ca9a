"""What the fake qsub, qstat and qdel share: their state directory and the captured PBS output.

There is no PBS server in the lab. These stand in for its commands on a site policy's
command_path, so that a test runs them the way the hub does (through sudo as a lab user, with the
policy's PATH and environment) and the adapter parses what real servers printed.

They answer only with text captured from real PBS servers (the shared fixtures' pbs/ folder,
reached through the `captured` link in the state directory). The only substitutions, in a job
record, are:
- the job id (the record's key), by the id this fake qsub printed;
- the user part of Job_Owner (user@host), by the user who ran qsub; the host part stays;
- Job_Name, by the name the job was given (-N), as PBS does.
Everything else, the comments, nodes, exit codes and queue limits included, is as captured.

The state directory is named by $HPCGATE_FAKE_PBS_DIR (set by the policy's cluster.environment):
  jobs/<seq>.json  one per job: its state (queued, held, running, finished, deleted; a test moves
                   it along), owner, name, and the script qsub read;
  calls.jsonl      one line per command run: which, its argv, its user and uid, its environment.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

STATE_VAR = "HPCGATE_FAKE_PBS_DIR"

# state -> (captured `qstat -x -f -F json` document, the job in it)
JOB_RECORDS = {
    "queued": ("pbspro2022_aurora_qstat_xf_json_multi_8jobs_Q_H_F.json",
               "4683812.aurora-pbs-0001.hostmgmt.cm.aurora.alcf.anl.gov"),
    "held": ("pbspro19_qstat_xf_json_held_userhold.json", "157.pbs"),
    "running": ("pbspro19_metacentrum_qstat_xf_json_running_2nodes.json",
                "12860476.meta-pbs.metacentrum.cz"),
    "finished": ("pbspro19_qstat_xf_json_finished_F_reserialized_by_buildtest.json", "40.pbs"),
    # F, substate 91, "... and terminated": the record PBS keeps of a job qdel removed. (The one
    # public capture is of a job deleted while it waited; none of a running one was found.)
    "deleted": ("pbspro2022_aurora_qstat_xf_json_multi_8jobs_Q_H_F.json",
                "4846771.aurora-pbs-0001.hostmgmt.cm.aurora.alcf.anl.gov"),
}
FINAL = ("finished", "deleted")
QUEUES = "pbspro19_qstat_Qf_json_single_queue_workq.json"
# "11733571.meta-pbs.metacentrum.cz # job ID is ..." (the comment is the doc's, not qsub's).
QSUB_OUTPUT = "qsub/pbspro_metacentrum_qsub_batch_success.console_ANNOTATED.txt"

# Per-job answers, as captured (errors/pbs_sirna_qdel_qsub_errors.console_EXCERPTS.txt,
# errors/pbspro_usyd_training_qsub_then_qdel_finished.console.txt,
# errors/pbspro_palmetto_qstat_job_has_finished_use_x.console.txt); exit codes from SOURCES.md §8.
UNKNOWN_JOB = ("{cmd}: Unknown Job Id {id}", 153)
QDEL_FINISHED = ("qdel: Job has finished", 35)
QSTAT_FINISHED = ("qstat: {id} Job has finished, use -x or -H to obtain historical job information", 35)


def state_dir() -> Path:
    path = os.environ.get(STATE_VAR)
    if not path:
        sys.exit(f"fake PBS: ${STATE_VAR} is not set (the policy's cluster.environment sets it)")
    return Path(path)


def captured(name: str) -> str:
    return (state_dir() / "captured" / name).read_text()


def _shared_file(path: Path, flags: int) -> int:
    """Open for every lab user: the first writer may be alice, the next root or bob."""
    fd = os.open(path, flags | os.O_CREAT, 0o666)
    with contextlib.suppress(PermissionError):  # only the file's owner may; it did already
        os.fchmod(fd, 0o666)
    return fd


def record_call(command: str, stdin: str | None = None) -> dict[str, Any]:
    """Append who ran `command` (`id -un`), with what argv and environment, to calls.jsonl."""
    call = {"command": command, "argv": sys.argv[1:], "user": pwd.getpwuid(os.getuid()).pw_name,
            "uid": os.getuid(), "env": dict(os.environ), "stdin": stdin}
    fd = _shared_file(state_dir() / "calls.jsonl", os.O_WRONLY | os.O_APPEND)
    with os.fdopen(fd, "a") as out:
        out.write(json.dumps(call) + "\n")
    return call


def next_sequence() -> int:
    fd = _shared_file(state_dir() / "sequence", os.O_RDWR)
    with os.fdopen(fd, "r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        number = int(f.read().strip() or 0) + 1
        f.seek(0)
        f.truncate()
        f.write(str(number))
    return number


def sequence_number(job_id: str) -> str:
    """PBS takes `123`, `123.server` and `123.server@server` for the same job."""
    return job_id.split(".", 1)[0].split("@", 1)[0]


def load_job(job_id: str) -> dict[str, Any] | None:
    number = sequence_number(job_id)
    if not number.isdigit():
        return None
    try:
        return json.loads((state_dir() / "jobs" / f"{number}.json").read_text())
    except FileNotFoundError:
        return None


def all_jobs() -> list[dict[str, Any]]:
    jobs = [json.loads(p.read_text()) for p in (state_dir() / "jobs").glob("*.json")]
    return sorted(jobs, key=lambda job: int(sequence_number(job["id"])))


def save_job(job: dict[str, Any]) -> None:
    """Atomically (qstat may read it meanwhile), writable by the next command's user."""
    folder = state_dir() / "jobs"
    folder.mkdir(mode=0o777, exist_ok=True)
    with contextlib.suppress(PermissionError):
        folder.chmod(0o777)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".job-")
    with os.fdopen(fd, "w") as out:
        json.dump(job, out)
    os.chmod(tmp, 0o666)  # noqa: S103 - the next command may run as another lab user
    os.replace(tmp, folder / f"{sequence_number(job['id'])}.json")


def server_name() -> str:
    """The server part of the captured qsub output's job id."""
    line = next(ln for ln in captured(QSUB_OUTPUT).splitlines() if re.match(r"^\d+\.", ln))
    return line.split()[0].split(".", 1)[1]


# -- replaying `qstat -f -F json` documents ---------------------------------------------------------


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def _document(name: str) -> tuple[list[str], int]:
    """The captured document's lines and the index of its `"Jobs":{` line."""
    lines = captured(name).rstrip("\n").split("\n")
    return lines, next(i for i, ln in enumerate(lines) if re.match(r'^\s*"Jobs"\s*:\s*\{\s*$', ln))


def _record(name: str, captured_id: str) -> list[str]:
    """The lines of one job's record, `"id":{` to its `}`, without a trailing comma."""
    lines, _ = _document(name)
    key = re.compile(rf'^\s*"{re.escape(captured_id)}"\s*:\s*\{{\s*$')
    start = next(i for i, ln in enumerate(lines) if key.match(ln))
    close = _indent(lines[start]) + "}"
    end = next(j for j in range(start + 1, len(lines)) if lines[j].rstrip() in (close, close + ","))
    return [*lines[start:end], close]


def job_record(job: dict[str, Any]) -> list[str]:
    """The captured record for the job's state, with its id, owner and name substituted."""
    name, captured_id = JOB_RECORDS[job["state"]]
    lines = _record(name, captured_id)
    lines[0] = lines[0].replace(f'"{captured_id}"', json.dumps(job["id"]), 1)
    for i, line in enumerate(lines):
        lines[i] = re.sub(r'^(\s*"Job_Owner"\s*:\s*")[^@"]*', lambda m: m.group(1) + job["owner"], line)
        lines[i] = re.sub(r'^(\s*"Job_Name"\s*:\s*")[^"]*', lambda m: m.group(1) + job["name"], lines[i])
    return lines


def jobs_document(jobs: list[dict[str, Any]]) -> str:
    """One document as `qstat -f -F json` prints it: the header of the first job's capture, then
    each record. With no job, the header alone (as PBS prints when every id was unknown)."""
    name = JOB_RECORDS[jobs[0]["state"] if jobs else "queued"][0]
    lines, at = _document(name)
    if not jobs:
        head = lines[:at]
        return "\n".join([*head[:-1], head[-1].rstrip().rstrip(","), "}"]) + "\n"
    records = [job_record(job) for job in jobs]
    body = [ln for rec in records for ln in [*rec[:-1], rec[-1] + ","]]
    body[-1] = body[-1][:-1]
    close = _indent(lines[at]) + "}"
    tail = next(j for j in range(at + 1, len(lines)) if lines[j].rstrip() in (close, close + ","))
    return "\n".join([*lines[: at + 1], *body, *lines[tail:]]) + "\n"
