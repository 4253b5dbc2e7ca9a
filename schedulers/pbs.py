"""PBS Professional / OpenPBS as pure functions: build argv and scripts, parse what the commands print.

Status comes from ONE `qstat -x -f -F json ID ...` per tick for every tracked job; `-x` keeps
finished jobs (state F) in the answer, so the same call also gives final states. Real PBS prints
JSON that is not always valid (numbers type-guessed from environment values, unescaped quotes,
trailing commas in hand-abridged copies, cJSON's TAB layout in newer OpenPBS): `load_document`
repairs what can be repaired, and drops `Variable_List`, which the gateway never needs.
Torque's XML/text output is not spoken here. Nothing in this module runs a process.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import signal
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any

from schedulers.durations import format_pbs, format_words, parse_pbs_walltime
from schedulers.errors import CancelError, SchedulerUnavailable, SubmitError
from schedulers.model import JobRequest, JobState, JobStatus, UnsafeValue, check_name, check_path
from schedulers.script import export_lines, shell_quote

# -- submit ------------------------------------------------------------------------------------


def _positive_int(what: str, value: Any, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise UnsafeValue(f"{what} must be a whole number of at least {minimum}, not {value!r}")
    return value


def _directive_path(what: str, value: str) -> str:
    # qsub splits directive lines at blanks and reads `host:path` from -o: neither may occur.
    check_path(what, value)
    if any(c.isspace() for c in value) or any(c in value for c in ":\"'\\"):
        raise UnsafeValue(f"{what} {value!r} may not hold blanks, quotes, backslashes or ':' for PBS")
    return value


def _select(req: JobRequest) -> str:
    chunk = f"select=1:ncpus={_positive_int('cpus', req.cpus)}"
    if req.memory_mb is not None:
        chunk += f":mem={_positive_int('memory in MB', req.memory_mb)}mb"
    if _positive_int("gpus", req.gpus, minimum=0):
        chunk += f":ngpus={req.gpus}"
    if req.node:
        chunk += f":host={check_name('node', req.node)}"
    return chunk


def build_script(req: JobRequest) -> str:
    """The batch script: `#PBS` header from typed fields, a first command, exports, then the body."""
    lines = ["#!/bin/bash", f"#PBS -N {check_name('job name', req.name)}",
             "#PBS -S /bin/bash"]  # PBS runs scripts with the login shell unless told
    if req.partition:
        lines.append(f"#PBS -q {check_name('queue', req.partition)}")
    if req.account:
        lines.append(f"#PBS -A {check_name('account', req.account)}")
    lines.append(f"#PBS -l {_select(req)}")
    if req.walltime is not None:
        lines.append(f"#PBS -l walltime={format_pbs(req.walltime)}")
    if req.output:
        # -k oed writes the log in place while the job runs (not staged back at its end).
        lines += [f"#PBS -o {_directive_path('output path', req.output)}", "#PBS -j oe", "#PBS -k oed"]
    for directive in req.extra_directives:
        text = directive.removeprefix("#PBS ").strip()
        if any(c in directive for c in "\0\n\r") or not text:
            raise UnsafeValue(f"site directive {directive!r} is empty or spans lines")
        lines.append(f"#PBS {text}")
    # qsub reads directives up to the first command: nothing below can become one.
    lines.append(": end of the PBS header")
    lines += export_lines(req.environment)
    if req.workdir:
        # PBS Pro has no working-directory option: jobs start in $HOME.
        lines.append(f"cd {shell_quote(check_path('working directory', req.workdir))} || exit 1")
    lines.append(req.script.rstrip("\n"))
    return "\n".join(lines) + "\n"


def build_qsub(req: JobRequest) -> tuple[list[str], str]:
    """argv for qsub and the script it reads on stdin (no -v: job environments are public)."""
    return ["qsub"], build_script(req)


_JOB_ID = re.compile(r"^\d+(?:\[\d*\])?(?:\.[A-Za-z0-9_.-]+)?(?:@[A-Za-z0-9_.-]+)?$")


def parse_qsub(stdout: str) -> str:
    """The job id qsub printed (`123.server`): the last line that is one (hooks may print above)."""
    for line in reversed(stdout.strip().splitlines()):
        if _JOB_ID.match(line.strip()):
            return line.strip()
    raise SubmitError(f"qsub printed no job id: {stdout.strip()[:200]!r}", stdout)


_UNREACHABLE = re.compile(
    r"cannot connect to server|Premature end of message|Communication failure|Connection refused|"
    r"Connection timed out|No route to host|Unknown Host|could not connect to trqauthd|"
    r"pbs_iff|Batch protocol error|Invalid credential|socket_connect_unix failed",
    re.I,
)
_LIMIT_ERROR = re.compile(r"exceeds queue resource limits|violates queue and/or server resource limits|"
                          r"rejected by all possible destinations", re.I)

# (pattern, sentence): {queue} is "queue 'debug'" or "the default queue", {0} the pattern's group
# and {w0} the same in words (mem -> memory).
_SUBMIT_ERRORS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"cannot satisfy queue max (\w+)", re.I),
     "The {w0} you asked for is more than {queue} allows."),
    (re.compile(r"cannot locate feasible nodes", re.I),
     "No node can hold the cores, memory or GPUs you asked for (or none is up)."),
    (re.compile(r"Job violates queue and/or server resource limits|exceeds queue resource limits", re.I),
     "The request (walltime, cores, memory or GPUs) is outside the limits of {queue}."),
    (re.compile(r"Maximum number of jobs already in queue", re.I),
     "{Queue} holds as many jobs as it may; try again later."),
    (re.compile(r"Job rejected by all possible destinations", re.I),
     "No execution queue that {queue} routes to accepts this request (its size or walltime fits "
     "none of them)."),
    (re.compile(r"Unknown queue", re.I), "{Queue} does not exist."),
    (re.compile(r"Unknown resource:? ?(\S*)", re.I),
     "This PBS server does not know the resource '{0}' (for ngpus: it has no GPUs configured)."),
    (re.compile(r"Illegal attribute or resource value", re.I),
     "PBS did not accept a value of the request (walltime, memory, cores or GPUs)."),
    (re.compile(r"Unauthorized Request|user ACL rejected|Access from host not allowed", re.I),
     "You are not allowed to submit to {queue}."),
    (re.compile(r"Bad UID for job execution", re.I),
     "PBS does not accept your account for running jobs (unknown on the nodes, or a system account)."),
    (re.compile(r"Failed to save job", re.I),
     "The PBS server could not save the job; try again later, and if it persists ask the "
     "administrators to look at the server's log."),
    (re.compile(r"Resource: (\S+) is required to be set", re.I),
     "The site's submission rules need the resource '{0}': the portal's administrators must add it "
     "to the job directives."),
]
_WOULD_EXCEED = re.compile(
    r"would exceed (?:queue (\S+?)'s |the queue's |complex's |server's )?per-(user|group|project)", re.I)


def _qsub_message(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    return " ".join(ln.removeprefix("qsub:").strip() for ln in lines[-3:])


def _precise_limit(req: JobRequest, queue: QueueLimits) -> str | None:
    """'Queue 'debug' allows at most 1 hour; you asked for 2 hours.' when a known limit is passed."""
    q = f"Queue '{queue.name}'"
    if req.walltime is not None:
        if queue.max_walltime is not None and req.walltime > queue.max_walltime:
            return (f"{q} allows at most {format_words(queue.max_walltime, parts=2)}; you "
                    f"asked for {format_words(req.walltime, parts=2)}.")
        if queue.min_walltime is not None and req.walltime < queue.min_walltime:
            return (f"{q} takes jobs of at least {format_words(queue.min_walltime, parts=2)};"
                    f" you asked for {format_words(req.walltime, parts=2)}.")
    pairs = ((queue.max_ncpus, req.cpus, "cores"), (queue.max_ngpus, req.gpus, "GPUs"),
             (queue.max_mem_mb, req.memory_mb, "MB of memory"))
    for allowed, asked, unit in pairs:
        if allowed is not None and asked is not None and asked > allowed:
            return f"{q} allows at most {allowed} {unit}; you asked for {asked}."
    if queue.min_nodect is not None and queue.min_nodect > 1:
        return f"{q} takes only jobs of at least {queue.min_nodect} nodes; notebook jobs use 1."
    return None


def parse_submit_error(stderr: str, req: JobRequest | None = None,
                       queue: QueueLimits | None = None) -> str:
    """A sentence for a refused qsub; with the request and its queue's limits, a precise one."""
    raw = _qsub_message(stderr)
    if req is not None and queue is not None and _LIMIT_ERROR.search(raw):
        precise = _precise_limit(req, queue)
        if precise:
            return precise
    name = f"queue '{req.partition}'" if req is not None and req.partition else "the default queue"
    per = _WOULD_EXCEED.search(raw)
    if per:
        where = f"queue '{per.group(1)}'" if per.group(1) else "the queue or server"
        return (f"You have reached a per-{per.group(2)} limit of {where} (on jobs or resources): end "
                "one of your jobs there and try again.")
    for pattern, sentence in _SUBMIT_ERRORS:
        match = pattern.search(raw)
        if match:
            groups = [g or "?" for g in match.groups()]
            words = _resource_words(groups[0]) if groups else ""
            return sentence.format(*groups, queue=name, Queue=name[:1].upper() + name[1:], w0=words)
    return f"PBS refused the job: {raw or 'no reason given'}"


def parse_submit(stdout: str, stderr: str, returncode: int, req: JobRequest | None = None,
                 queue: QueueLimits | None = None) -> str:
    """The job id from qsub, or a SubmitError in words (SchedulerUnavailable if PBS is away)."""
    if returncode == 0:
        return parse_qsub(stdout)
    if _UNREACHABLE.search(stderr):
        raise SchedulerUnavailable(f"The PBS server is not answering: {_qsub_message(stderr)}", stderr)
    raise SubmitError(parse_submit_error(stderr, req, queue), stderr)


def is_limit_error(stderr: str) -> bool:
    """qsub refused a request for a queue's limits: worth reading the limits for a precise sentence."""
    return bool(_LIMIT_ERROR.search(stderr))


# -- reading PBS's JSON ----------------------------------------------------------------------------

_DOC_START = re.compile(r"^[ \t]*\{", re.M)
_VARIABLE_LIST = re.compile(r'^(?P<indent>[ \t]*)"Variable_List"[ \t]*:[ \t]*\{[ \t]*$')
_MEMBER = re.compile(r'^(?P<head>[ \t]*"[^"]*"[ \t]*:[ \t]*)(?P<value>.*?)(?P<comma>,?)[ \t]*$')


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip(" \t"))]


def _next_nonblank(lines: list[str], j: int) -> str:
    for line in lines[j + 1: j + 50]:  # no slice of the whole rest: outputs can be megabytes
        if line.strip():
            return line
    return next((ln for ln in itertools.islice(lines, j + 50, None) if ln.strip()), "")


def _closes_block(lines: list[str], j: int, indent: str) -> bool:
    """Line j is the `}` of a block opened at `indent`: same indent, then a sibling or the parent's end."""
    if lines[j].rstrip() not in (indent + "}", indent + "},"):
        return False
    following = _next_nonblank(lines, j)
    if not following:
        return True
    return ((_indent(following) == indent and following.lstrip().startswith('"'))
            or (len(_indent(following)) < len(indent) and following.lstrip().startswith("}")))


def _drop_variable_lists(text: str) -> str:
    # Environment values are where raw quotes, backslashes and newlines (BASH_FUNC_*) come from.
    lines, out, i = text.split("\n"), [], 0
    while i < len(lines):
        match = _VARIABLE_LIST.match(lines[i])
        end = None
        if match:
            indent = match.group("indent")
            end = next((j for j in range(i + 1, len(lines)) if _closes_block(lines, j, indent)), None)
        if match is None or end is None:
            out.append(lines[i])
            i += 1
            continue
        comma = "," if lines[end].rstrip().endswith(",") else ""
        out.append(f'{match.group("indent")}"Variable_List":{{}}{comma}')
        i = end + 1
    return "\n".join(out)


def _repair_value(value: str) -> str:
    """One member's value as valid JSON: bare words and `005` quoted, raw quotes re-escaped."""
    if value in ("{", "[", "{}", "[]"):
        return value
    try:
        json.loads(value)
        return value
    except ValueError:
        pass
    if len(value) >= 2 and value.startswith('"') and value.endswith('"'):
        value = value[1:-1]
    return json.dumps(value)


def _repair(text: str) -> str:
    """Line by line, PBS's one-member-per-line layout: fix values, then drop trailing commas."""
    lines = []
    for line in _drop_variable_lists(text).split("\n"):
        match = _MEMBER.match(line)
        if match:
            line = match.group("head") + _repair_value(match.group("value")) + match.group("comma")
        lines.append(line.rstrip())
    following = ""
    for i in range(len(lines) - 1, -1, -1):  # backwards: each line knows the next non-blank one
        if lines[i].endswith(",") and following[:1] in ("}", "]"):
            lines[i] = lines[i][:-1]
        if lines[i].strip():
            following = lines[i].strip()
    return "\n".join(lines)


def load_document(stdout: str) -> tuple[dict[str, Any] | None, str]:
    """(the JSON document qstat printed, text after it), repairing PBS's broken JSON.

    (None, "") when stdout holds no JSON at all (empty, Torque XML, `qstat -f` text). Text before
    the document is ignored (OpenPBS 23 prints a table first with `-u`); text after it is returned
    so that an error merged into stdout can still be reported.
    """
    start = _DOC_START.search(stdout)
    if start is None:
        return None, ""
    text = stdout[start.start():]
    decoder = json.JSONDecoder()
    try:
        doc, end = decoder.raw_decode(text.lstrip())
        rest = text.lstrip()[end:]
    except ValueError:
        try:
            repaired = _repair(text)
            doc, end = decoder.raw_decode(repaired.lstrip())
            rest = repaired.lstrip()[end:]
        except ValueError as err:
            raise SchedulerUnavailable("PBS's answer could not be read, even after repairing its JSON.",
                                       stdout[:500]) from err
    if not isinstance(doc, dict):
        raise SchedulerUnavailable("PBS's answer is not a JSON object.", stdout[:500])
    return doc, rest.strip()


# -- status ------------------------------------------------------------------------------------

_STATES: dict[str, JobState] = {
    "Q": JobState.PENDING,
    "W": JobState.PENDING,  # waiting for its execution time (qsub -a) or after a stage-in failure
    "T": JobState.PENDING,  # being moved between queues
    "H": JobState.HELD,
    "R": JobState.RUNNING,
    "E": JobState.RUNNING,  # exiting: the next query gives the final state
    "B": JobState.RUNNING,  # array job with subjobs started
    "S": JobState.SUSPENDED,
    "U": JobState.SUSPENDED,  # cycle-harvesting: the workstation's owner is busy
    # F and X are final; which final state depends on substate and Exit_status (_final).
    # M (moved to another server) is followed there, not here: UNKNOWN with words (_state_words).
}
_STATE_WORDS = {
    "R": "Running",
    "E": "Ending: the job is exiting",
    "B": "Running (array job)",
    "S": "Suspended",
    "U": "Suspended while its workstation is in use",
    "W": "Waiting for its requested start time",
    "T": "Queued: being moved between queues",
    "M": "The job was moved to another PBS server; it is not followed there",
}
SUBSTATE_TERMINATED = 91
"""F after a qdel ("... and terminated"); 92 is finished, 93 failed (OpenPBS job.h)."""

# PBS's own negative Exit_status codes (JOB_EXEC_* in OpenPBS job.h), in plain words.
_EXEC_CODES = {
    -1: "the job could not start on its node",
    -2: "the job could not start on its node (after its files were staged)",
    -3: "the job could not start and was to be retried",
    -4: "the node aborted the job while starting it",
    -5: "the job could not be restarted",
    -6: "the job could not be restarted",
    -7: "the job's restart file was bad",
    -10: "your user or group is not valid on the node",
    -11: "the job was requeued to run again",
    -12: "the job was checkpointed and stopped",
    -13: "the job could not start: a password was missing or wrong",
    -14: "the job was requeued after a node of it failed",
    -15: "the job was requeued for a restart",
    -16: "a site hook failed while starting the job; it was requeued",
    -17: "a site hook failed while starting the job and deleted it",
    -18: "a site hook requeued the job",
    -19: "a site hook deleted the job",
    -20: "the job's first node failed; it was requeued",
    -21: "the job could not start: a security check failed",
    -22: "a site hook failed on the node",
    -23: "the job could not start: its Kerberos credentials failed",
    -24: "the job used more cores than it asked for and was killed",
    -25: "the job used more CPU than it asked for and was killed",
    -26: "the job used more virtual memory than it asked for and was killed",
    -27: "the job used more memory than it asked for and was killed",
    -28: "the job used more CPU time than it asked for and was killed",
    -29: "the job reached its walltime and was stopped",
    -30: "the job's nodes could not be joined",
    -31: "the job used more huge-page memory than it asked for and was killed",
    -32: "the job was requeued after being left a zombie",
}
WALLTIME_KILLED = -29


def _int(value: Any) -> int | None:
    """PBS type-guesses: a number may come as 0, "0" or "-29" (newer Altair builds)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        return int(value)
    return None


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _final(job: Mapping[str, Any]) -> tuple[JobState, str, int | None, int | None]:
    """(state, plain words, exit code, signal) of a finished (F/X) job."""
    code = _int(job.get("Exit_status"))
    comment = str(job.get("comment") or "")
    terminated = (_int(job.get("substate")) == SUBSTATE_TERMINATED
                  or comment.rstrip().endswith("and terminated"))
    if code is None:
        if terminated:
            return JobState.CANCELLED, "The job was deleted before it started.", None, None
        return JobState.FAILED, "The job ended, but PBS kept no exit status for it.", None, None
    if code == WALLTIME_KILLED:
        return JobState.TIMEOUT, "The job reached its walltime and was stopped.", None, None
    sig = code - 256 if code >= 256 else None
    if terminated:
        kept = code if 0 <= code < 256 else None
        return JobState.CANCELLED, "The job was deleted while it ran.", kept, sig
    if code == 0:
        return JobState.COMPLETED, "The job finished.", 0, None
    if code < 0:
        words = _EXEC_CODES.get(code, "PBS could not run the job")
        return JobState.FAILED, f"{words[0].upper()}{words[1:]} (PBS code {code}).", None, None
    if sig is not None:
        return JobState.FAILED, f"The job was killed by signal {sig} ({_signal_name(sig)}).", None, sig
    return JobState.FAILED, f"The job failed with exit code {code}.", code, None


# Scheduler comments on waiting jobs, in plain words. Only PBS's own "Can Never Run:" prefix (and a
# limit violation) marks a job that can never start: "would exceed ... per-user limit" clears when
# the user's other jobs end, so it is not permanent.
_RESOURCE_WORDS = {"ncpus": "cores", "mem": "memory", "ngpus": "GPUs", "nodect": "nodes",
                   "walltime": "walltime", "vmem": "virtual memory"}
_COMMENTS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"Insufficient amount of (?:queue |server )?resource: (\w+)", re.I),
     "waiting for free {0}"),
    (re.compile(r"Not enough free nodes available", re.I), "waiting for enough free nodes"),
    (re.compile(r"requesting an exclusive node and node is in use", re.I),
     "waiting for a whole node to become free"),
    (_WOULD_EXCEED, "a per-{1} limit is reached; it starts when other jobs end"),
    (re.compile(r"conflict with reservation or top job|Draining system", re.I),
     "nodes are kept free for a larger or earlier job"),
    (re.compile(r"not started", re.I), "the queue is stopped; an administrator must start it"),
    (re.compile(r"too many failed attempts to run", re.I),
     "PBS could not start the job after several attempts; an administrator must release it "
     "(or you cancel it)"),
    (re.compile(r"dedicated time", re.I), "waiting for dedicated time to end"),
    (re.compile(r"^Not Running: (.+)$", re.I), "{0}"),
]
_PERMANENT_COMMENT = re.compile(
    r"^\s*Can Never Run\b|Job violates queue and/or server resource limits|exceeds queue resource limits",
    re.I)
_HOLD_WORDS = {"u": "Held by you: release the job (qrls) to let it start",
               "o": "Held by an operator", "s": "Held by the system",
               "p": "Held: a password is needed"}


def _resource_words(name: str) -> str:
    return _RESOURCE_WORDS.get(name, f"'{name}' (a site resource)")


def explain_comment(comment: str, state: JobState, hold_types: str = "") -> tuple[str, bool]:
    """(plain words, can never clear) for a queued or held job's PBS comment."""
    comment = comment.strip()
    if _PERMANENT_COMMENT.search(comment):
        detail = re.sub(r"^Can Never Run:\s*", "", comment, flags=re.I)
        return f"The job can never start: {detail}", True
    prefix = "Held" if state is JobState.HELD else "Queued"
    holder = re.search(r"Job held by (\S+)", comment)
    if holder:
        return f"Held by {holder.group(1)}: it starts only after a release (qrls)", False
    for pattern, template in _COMMENTS:
        match = pattern.search(comment)
        if match:
            groups = [g or "" for g in match.groups()]
            if pattern.pattern.startswith("Insufficient"):
                groups = [_resource_words(groups[0])]
            return f"{prefix}: {template.format(*groups).strip()}", False
    if comment:
        return f"{prefix}: {comment}", False
    if state is JobState.HELD:
        return _HOLD_WORDS.get(hold_types[:1], "Held"), False
    return "Queued: waiting for the scheduler's next pass", False


_HOST_SEPARATORS = re.compile(r"[+/:()]")


def first_node(job: Mapping[str, Any]) -> str | None:
    """The first host of `exec_host` (`c1/0*2+c2/0*2` -> c1), else of `exec_vnode` (`(c1[0]:...)`)."""
    for key in ("exec_host", "exec_vnode"):
        value = str(job.get(key) or "").lstrip("(")
        host = _HOST_SEPARATORS.split(value, 1)[0].strip()
        host = re.sub(r"\[\d+\]$", "", host)  # vnode index: edtb-01[0]
        if host:
            return host
    return None


def parse_pbs_time(value: Any) -> datetime | None:
    """`Thu Nov  9 13:04:14 2023` (ctime, the server's local time) or an epoch -> datetime."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return datetime.fromtimestamp(value)
    if isinstance(value, str):
        try:
            return datetime.strptime(" ".join(value.split()), "%a %b %d %H:%M:%S %Y")
        except ValueError:
            return None
    return None


def status_from_job(job_id: str, job: Mapping[str, Any],
                    node_addresses: Mapping[str, str] | None = None) -> JobStatus:
    """One record of `qstat -f -F json`'s "Jobs" into a JobStatus."""
    letter = str(job.get("job_state") or "").strip().upper()
    comment = str(job.get("comment") or "").strip()
    exit_code = sig = None
    permanent = False
    if letter in ("F", "X"):
        state, text, exit_code, sig = _final(job)
    elif letter in _STATES:
        state = _STATES[letter]
        if state.is_waiting and letter not in ("W", "T"):
            text, permanent = explain_comment(comment, state, str(job.get("Hold_Types") or ""))
        else:
            text = _STATE_WORDS[letter]
    elif letter == "M":
        state, text = JobState.UNKNOWN, _STATE_WORDS["M"]
    else:
        state, text = JobState.UNKNOWN, f"PBS reports a state this gateway does not know: {letter!r}"
    node = first_node(job)
    estimated = None
    if state is JobState.PENDING:  # PBS keeps a stale estimate on held jobs: show it for queued only
        guess = job.get("estimated")
        estimated = parse_pbs_time(guess.get("start_time")) if isinstance(guess, Mapping) else None
    started = ends = None
    if state is JobState.RUNNING or state.is_final:
        started = parse_pbs_time(job.get("stime"))
        limit = (job.get("Resource_List") or {}).get("walltime")
        with contextlib.suppress(ValueError, TypeError):
            if started is not None and limit is not None and state is JobState.RUNNING:
                ends = started + parse_pbs_walltime(limit)
    # The job's environment stays out of logs and debugging records.
    raw = {k: v for k, v in job.items() if k != "Variable_List"}
    return JobStatus(
        job_id=job_id, state=state, reason=comment, reason_text=text, reason_is_permanent=permanent,
        node=node, node_address=(node_addresses or {}).get(node) if node else None,
        exit_code=exit_code, signal=sig, estimated_start=estimated, started=started, ends=ends,
        raw=raw)


def build_status(job_ids: Iterable[str]) -> list[str]:
    """ONE qstat for every tracked job; `-x` keeps finished ones. Never without ids (all history)."""
    ids = [check_name("job id", j) for j in job_ids]
    if not ids:
        raise ValueError("build_status needs at least one job id: qstat -x alone lists all history")
    return ["qstat", "-x", "-f", "-F", "json", *ids]


def build_list_current() -> list[str]:
    """Every job the server holds now (no `-x`: no history), for finding jobs nobody owns."""
    return ["qstat", "-f", "-F", "json"]


# Per-job answers on stderr: the job is not there (or has left), which is an answer, not a failure.
_JOB_GONE = re.compile(
    r"^(?:qstat|qdel): (?:Unknown Job Id(?: Error)?(?: (?P<a>\S+))?|(?P<b>\S+ )?Job has finished\b.*)$")


def _stderr_lines(text: str) -> list[str]:
    """Non-empty lines, with indented continuation lines joined to the line before."""
    lines: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if lines and line[:1] in (" ", "\t"):
            lines[-1] += " " + line.strip()
        else:
            lines.append(line.strip())
    return lines


def gone_job_ids(stderr: str) -> set[str]:
    """Job ids qstat/qdel reported as unknown or finished (`qstat: Unknown Job Id 12.srv`)."""
    found = set()
    for line in _stderr_lines(stderr):
        match = _JOB_GONE.match(line)
        if match and (match.group("a") or match.group("b")):
            found.add((match.group("a") or match.group("b")).strip())
    return found


def _only_gone_lines(text: str) -> bool:
    lines = _stderr_lines(text)
    return bool(lines) and all(_JOB_GONE.match(line) for line in lines)


def _not_json(stdout: str) -> str:
    text = stdout.lstrip()
    if text.startswith("<"):
        return "qstat printed XML: that is Torque, which this gateway does not speak (PBS Pro/OpenPBS only)."
    if text.startswith("Job Id:"):
        return "qstat printed text, not JSON: `-F json` needs PBS Professional or OpenPBS."
    return "qstat printed no JSON."


def parse_status(stdout: str, stderr: str = "", returncode: int = 0,
                 node_addresses: Mapping[str, str] | None = None) -> dict[str, JobStatus]:
    """Every job in `qstat -x -f -F json` output, keyed by the job id PBS printed.

    A failed or unreadable query raises SchedulerUnavailable (the watcher marks jobs UNKNOWN, never
    gone). "Unknown Job Id" / "Job has finished" lines are answers about single jobs: the call
    still succeeds with the jobs that were printed, even if that is none.
    """
    doc, trailing = load_document(stdout)
    errors = "\n".join(t for t in (stderr, trailing) if t.strip())
    per_job_only = _only_gone_lines(errors)
    if doc is None:
        if per_job_only:
            return {}
        if errors.strip():
            raise SchedulerUnavailable(f"The PBS server is not answering: {_one_line(errors)}", errors)
        raise SchedulerUnavailable(_not_json(stdout), stdout[:500])
    jobs = doc.get("Jobs")
    if errors.strip() and not per_job_only and (returncode != 0 or jobs is None):
        raise SchedulerUnavailable(f"The PBS server is not answering: {_one_line(errors)}", errors)
    if returncode != 0 and not per_job_only:
        raise SchedulerUnavailable(f"qstat failed (exit status {returncode}) without saying why.",
                                   stdout[:500])
    if jobs is None:
        return {}  # a header alone, exit 0, nothing on stderr: no such jobs
    if not isinstance(jobs, Mapping):
        raise SchedulerUnavailable("PBS's answer has a \"Jobs\" entry that is not an object.", stdout[:500])
    return {str(job_id): status_from_job(str(job_id), job, node_addresses)
            for job_id, job in jobs.items() if isinstance(job, Mapping)}


def _one_line(text: str) -> str:
    return "; ".join(_stderr_lines(text)[-3:])


def sequence_number(job_id: str) -> str:
    """`123.server.domain` -> `123`: PBS may print the server name longer than qsub did."""
    return job_id.split(".", 1)[0].split("@", 1)[0]


def match_job_ids(parsed: Mapping[str, JobStatus], wanted: Iterable[str]) -> dict[str, JobStatus]:
    """The parsed statuses keyed by the ids the caller tracks (same id, else the same number)."""
    by_number: dict[str, list[str]] = {}
    for key in parsed:
        by_number.setdefault(sequence_number(key), []).append(key)
    result = {}
    for job_id in wanted:
        if job_id in parsed:
            result[job_id] = parsed[job_id]
            continue
        keys = by_number.get(sequence_number(job_id), [])
        if len(keys) == 1:
            result[job_id] = replace(parsed[keys[0]], job_id=job_id)
    return result


# -- cancel ----------------------------------------------------------------------------------------


def build_cancel(job_ids: Iterable[str]) -> list[str]:
    ids = [check_name("job id", j) for j in job_ids]
    return ["qdel", *ids]


def cancel_error_is_harmless(stderr: str) -> bool:
    """qdel of a job that already ended ("Unknown Job Id", "Job has finished"): it is gone anyway."""
    return _only_gone_lines(stderr)


def parse_cancel(stdout: str, stderr: str, returncode: int) -> None:
    if returncode == 0 or cancel_error_is_harmless(stderr):
        return
    if _UNREACHABLE.search(stderr):
        raise SchedulerUnavailable("The PBS server is not answering; the job could not be cancelled yet.",
                                   stderr)
    raise CancelError(f"PBS could not cancel the job: {_one_line(stderr) or 'no reason given'}", stderr)


# -- queues ----------------------------------------------------------------------------------------

_SIZE = re.compile(r"^\s*(\d+)\s*([kmgtp]?)(b|w)?\s*$", re.I)


def parse_size_mb(value: Any) -> int | None:
    """A PBS size (`8gb`, `4194304kb`, `512mb`, bytes as a bare number, `w` words) in MB, rounded down."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value // 2**20
    match = _SIZE.match(str(value)) if isinstance(value, str) else None
    if not match:
        return None
    number, prefix, unit = int(match.group(1)), match.group(2).lower(), (match.group(3) or "b").lower()
    scale = 1024 ** "bkmgtp".index(prefix or "b") * (8 if unit == "w" else 1)
    return number * scale // 2**20


def _walltime(value: Any) -> timedelta | None:
    """A queue's walltime limit; None when not set, or unreadable (then the gateway's own check
    is skipped and the server still enforces the limit: one odd value must not hide the queue)."""
    try:
        return None if value is None else parse_pbs_walltime(value)
    except ValueError:
        return None


@dataclass(frozen=True)
class QueueLimits:
    """One queue from `qstat -Qf -F json`. None means no limit set."""

    name: str
    queue_type: str
    """"Execution" or "Route" (a routing queue passes jobs on to its route_destinations)."""
    enabled: bool
    """The queue accepts new jobs."""
    started: bool
    """Jobs in the queue may run."""
    max_walltime: timedelta | None
    max_ncpus: int | None
    max_mem_mb: int | None
    max_ngpus: int | None
    max_nodect: int | None
    min_walltime: timedelta | None
    min_nodect: int | None
    default_walltime: timedelta | None
    default_ncpus: int | None
    default_mem_mb: int | None
    route_destinations: tuple[str, ...]
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def is_route(self) -> bool:
        return self.queue_type.lower() == "route"


def _true(value: Any) -> bool:
    return value is True or str(value).strip().lower() == "true"


def queue_from_record(name: str, rec: Mapping[str, Any]) -> QueueLimits:
    def res(group: str) -> Mapping[str, Any]:
        value = rec.get(group)
        return value if isinstance(value, Mapping) else {}

    top, low, default = res("resources_max"), res("resources_min"), res("resources_default")
    return QueueLimits(
        name=name,
        queue_type=str(rec.get("queue_type") or "Execution"),
        enabled=_true(rec.get("enabled")),
        started=_true(rec.get("started")),
        max_walltime=_walltime(top.get("walltime")),
        max_ncpus=_int(top.get("ncpus")),
        max_mem_mb=parse_size_mb(top.get("mem")) if "mem" in top else None,
        max_ngpus=_int(top.get("ngpus")),
        max_nodect=_int(top.get("nodect")),
        min_walltime=_walltime(low.get("walltime")),
        min_nodect=_int(low.get("nodect")),
        default_walltime=_walltime(default.get("walltime")),
        default_ncpus=_int(default.get("ncpus")),
        default_mem_mb=parse_size_mb(default.get("mem")) if "mem" in default else None,
        route_destinations=tuple(d.strip() for d in str(rec.get("route_destinations") or "").split(",")
                                 if d.strip()),
        raw=MappingProxyType(dict(rec)),
    )


def build_queues_argv(queue: str | None = None) -> list[str]:
    return ["qstat", "-Q", "-f", "-F", "json", *([check_name("queue", queue)] if queue else [])]


def parse_queues(stdout: str) -> dict[str, QueueLimits]:
    """`qstat -Qf -F json` -> {name: QueueLimits}, in PBS's order; a header alone gives {}."""
    doc, _ = load_document(stdout)
    if doc is None:
        raise SchedulerUnavailable(_not_json(stdout).replace("qstat printed", "qstat -Qf printed"),
                                   stdout[:500])
    queues = doc.get("Queue")
    if not isinstance(queues, Mapping):
        return {}
    return {str(name): queue_from_record(str(name), rec) for name, rec in queues.items()
            if isinstance(rec, Mapping)}
