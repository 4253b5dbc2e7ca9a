"""The faults, one function each: `scenario(chaos, trial, rng, **settings)` breaks something at a
moment drawn from `rng`, checks what the issue promises, records it in `trial`, and cleans up
after itself (servers stopped, blockers cancelled, daemons running again) whatever happened."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import threading
import time
import traceback
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.chaos.harness import AUTH_REFRESH_AGE, PROXY_CHECK_INTERVAL, Chaos, Trial
from gateway.lab.procs import pid_alive, tcp_open

# "reported": after the launchers reported their address, before the servers answer (the hub
# used to forget that address: a new hub then waited start_timeout for a report never repeated).
MOMENTS = ("submit", "queued", "starting", "reported", "running")
# Servers that stay up through the scenarios that need running servers: bob's on c1 (debug, its
# tunnel to 127.0.0.1), alice's on c2 (long, its tunnel over c2's veth link).
STEADY = (("alice", "steady", {"partition": "long", "walltime": "2:00:00"}),
          ("bob", "steady", {"partition": "debug", "walltime": "0:30:00"}))
# A killed proxy is started again at the hub's next check; starting it and restoring the routes
# takes a few seconds more on a busy two-core machine.
PROXY_START_ALLOWANCE = 5.0
SCHEDULER_RETURN_LIMIT = 5.0
TUNNEL_RETURN_LIMIT = 10.0


def _wait(check: Callable[[], Any], timeout: float, step: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(step)
    return None


def _ended_reason(ch: Chaos, log: str, job: dict | None) -> str | None:
    """The hub's words for how the server's job ended, from its log since the trial began."""
    if job is None:
        return None
    for line in log.splitlines():
        if str(job["job_id"]) in line and re.search(r"ended|cancel|stopped|not running", line):
            return line.split("] ", 1)[-1].strip()
    return None


def _check_steady(ch: Chaos, trial: Trial, when: str, ask_slurm: bool = True) -> None:
    """Both steady servers still running in the hub's eyes, reachable, their jobs alive (Slurm
    is not asked while slurmctld is down: squeue would wait out its message timeout)."""
    jobs = ch.jobs() if ask_slurm else []
    for user, name, _ in STEADY:
        try:
            model = ch.server(user, name)
        except RuntimeError as err:
            trial.fail(f"{when}: the hub did not answer about {user}/{name}: {err}")
            continue
        status = ch.reach(user, name)
        job = ch.server_job(user, name, jobs)
        if status >= 500:
            trial.http_5xx += 1
        if model is None or not model.get("ready"):
            if ch.active(job):
                trial.wrong_states += 1
                trial.fail(f"{when}: {user}/{name} not running in the hub, its job {job['job_id']} "
                           f"is {job['job_state']}")
            trial.lost_servers += 1
            trial.fail(f"{when}: {user}/{name} is gone")
        elif status != 200:
            trial.lost_servers += 1
            trial.fail(f"{when}: {user}/{name} answered {status} through the proxy")
        elif not ch.active(job) and jobs:
            trial.wrong_states += 1
            trial.fail(f"{when}: the hub says {user}/{name} runs, its job is "
                       f"{job['job_state'] if job else 'gone'}")


def ensure_steady(ch: Chaos, say: Callable[[str], None]) -> None:
    """Start the steady servers that are not running (a first call, or a walltime reached)."""
    for user, name, options in STEADY:
        model = ch.server(user, name)
        if model is not None and model.get("ready") and ch.reach(user, name) == 200:
            continue
        if model is not None:
            ch.remove(user, name)  # a walltime reached between scenarios
        say(f"  starting {user}/{name}")
        ch.spawn(user, name, options)
        ch.tunnels_since = time.monotonic()
    for user, name, _ in STEADY:
        if not ch.wait_ready(user, name, timeout=150):
            raise RuntimeError(f"the steady server {user}/{name} did not start")


def remove_steady(ch: Chaos) -> None:
    for user, name, _ in STEADY:
        ch.remove(user, name)


# -- 1. the hub SIGKILLed -----------------------------------------------------------------------------


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def _sbatch_running(hub_pid: int) -> bool:
    """Whether an sbatch the hub started (through sudo) runs now."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv[:2] == [b"sbatch", b"--parsable"] and _parent(_parent(int(entry))) == hub_pid:
                return True
    return False


def hub_kill(ch: Chaos, trial: Trial, rng: random.Random, moment: str = "running",
             **_: Any) -> None:
    """Two users' named servers; the hub SIGKILLed at `moment`; a new hub on the same state.
    Afterwards each server runs and answers through the proxy, or ended with a reason in words;
    no orphan job; no key line of an ended server in authorized_keys."""
    n = trial.number
    servers = [("alice", f"k{n}a-{ch.run_tag}", {"partition": "debug", "walltime": "0:20:00"}),
               ("bob", f"k{n}b-{ch.run_tag}", {"partition": "long", "walltime": "0:20:00"})]
    first = max((j["job_id"] for j in ch.jobs()), default=0)
    offset = ch.log_size()

    def job(user: str, name: str) -> dict | None:
        found = ch.server_job(user, name)
        return found if found and found["job_id"] > first else None

    try:
        if moment == "queued":  # fill both nodes: the servers' jobs must wait
            blockers = [ch.block("c1"), ch.block("c2")]
            if not _wait(lambda: all(ch.active(j) and j["job_state"] == "RUNNING"
                                     for j in ch.jobs() if str(j["job_id"]) in blockers), 30):
                raise RuntimeError("the blocker jobs did not start")
        for user, name, options in servers:
            ch.spawn(user, name, options)
        if moment == "submit" and rng.random() < 0.5:
            # While the hub's sbatch runs: the job is made after the hub died, which never
            # learns its id (the window a random delay rarely hits).
            if not _wait(lambda: _sbatch_running(ch.hub.proc.pid if ch.hub.proc else 0), 30,
                         step=0.001):
                raise RuntimeError("the hub never ran sbatch")
            moment, delay = "sbatch", 0.0
        elif moment == "submit":  # preparing and sbatch take about 0.1 s on the lab
            delay = rng.uniform(0.0, 0.25)
        elif moment == "queued":
            if not _wait(lambda: all((j := job(u, s)) and j["job_state"] == "PENDING"
                                     for u, s, _ in servers), 60):
                raise RuntimeError("the servers' jobs were never queued")
            delay = rng.uniform(0.0, 3.0)
        elif moment == "reported":  # the launchers said where they listen; not yet answering
            if not _wait(lambda: all(f"POST /hub/api/hpcgate/report ({u}@" in ch.log_since(offset)
                                     for u, _, _ in servers), 60, step=0.02):
                raise RuntimeError("the servers' launchers never reported")
            delay = 0.0
        elif moment == "starting":
            if not _wait(lambda: all((j := job(u, s)) and j["job_state"] == "RUNNING"
                                     for u, s, _ in servers), 60, step=0.05):
                raise RuntimeError("the servers' jobs never started")
            delay = rng.uniform(0.0, 1.5)
        else:
            for user, name, _ in servers:
                if not ch.wait_ready(user, name, timeout=150):
                    raise RuntimeError(f"{user}/{name} did not start before the kill")
            delay = rng.uniform(0.0, 3.0)
        time.sleep(delay)
        at_kill = {}
        for user, name, _ in servers if moment != "sbatch" else ():  # no time to ask
            with contextlib.suppress(RuntimeError):
                model = ch.server(user, name)
                at_kill[name] = "ready" if model and model.get("ready") else "pending"
        ch.kill_hub()
        jobs_at_kill = {(u, s): job(u, s) for u, s, _ in servers}
        down = rng.uniform(0.0, 5.0)
        unblock = rng.choice(("while the hub is down", "after the restart"))
        trial.timing = (f"{moment} +{delay:.1f} s, down {down:.1f} s"
                        + (f", nodes freed {unblock}" if moment == "queued" else ""))
        submitted = sum(1 for j in jobs_at_kill.values() if j)
        trial.notes.append(f"at the kill: {submitted}/2 jobs submitted, servers {at_kill or '?'}")
        if moment == "queued" and unblock == "while the hub is down":
            ch.cancel_blockers()
        time.sleep(down)
        took = ch.restart_hub()
        trial.notes.append(f"new hub up in {took:.1f} s")
        if moment == "queued" and unblock == "after the restart":
            ch.cancel_blockers()

        outcomes = {(u, s): ch.settle(u, s) for u, s, _ in servers}
        log = ch.log_since(offset)
        for (user, name), outcome in outcomes.items():
            j = job(user, name)
            had_job = jobs_at_kill[(user, name)] is not None
            if outcome == "running":
                if not ch.active(j):
                    trial.wrong_states += 1
                    trial.fail(f"{user}/{name} runs in the hub, its job is "
                               f"{j['job_state'] if j else 'missing'}")
            elif outcome == "ended":
                if ch.active(j):
                    trial.wrong_states += 1
                    trial.fail(f"{user}/{name} ended in the hub, its job {j['job_id']} is "
                               f"{j['job_state']}")
                if had_job:
                    trial.lost_servers += 1
                    reason = _ended_reason(ch, log, j)
                    trial.fail(f"{user}/{name} (job {j['job_id'] if j else '?'}) ended after the "
                               f"restart: {reason or 'no reason in the hub log'}")
                elif j is not None:
                    reason = _ended_reason(ch, log, j)
                    if reason is None:
                        trial.fail(f"{user}/{name} ended with no reason in the hub's log")
                else:
                    trial.notes.append(f"{user}/{name} killed before its job was submitted: ended")
                left = ch.key_lines(user, name)
                if left:
                    trial.fail(f"{len(left)} tunnel key line(s) of the ended {user}/{name} left "
                               "in authorized_keys")
            else:
                trial.lost_servers += 1
                trial.fail(f"{user}/{name} {outcome}")
        stray = [o for o in ch.orphans() if int(o["job_id"]) > first]
        if stray:
            trial.orphan_jobs += len(stray)
            trial.fail(f"orphan jobs: {', '.join(str(o['job_id']) for o in stray)}")
            ch.cancel(*[str(o["job_id"]) for o in stray])
    finally:
        ch.cancel_blockers()
        for user, name, _ in servers:
            gone, errors = ch.remove(user, name)
            if errors:
                trial.http_5xx += errors
                trial.fail(f"stopping {user}/{name} got {errors} answers 5xx")
            if not gone:
                trial.fail(f"{user}/{name} could not be stopped")
        left_jobs = _wait(lambda: not any(ch.active(job(u, s)) for u, s, _ in servers), 30)
        if not left_jobs:
            active = [job(u, s) for u, s, _ in servers if ch.active(job(u, s))]
            trial.orphan_jobs += len(active)
            trial.fail(f"jobs still active after their servers were stopped: "
                       f"{[j['job_id'] for j in active if j]}")
            ch.cancel(*[str(j["job_id"]) for j in active if j])
        for user, name, _ in servers:
            if ch.key_lines(user, name):
                trial.fail(f"tunnel key line of {user}/{name} left after it was stopped")


# -- 2. the proxy SIGKILLed ---------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


def proxy_kill(ch: Chaos, trial: Trial, rng: random.Random, **_: Any) -> None:
    """The proxy SIGKILLed: its main process alone (`kill -9` of the pid file's process; nginx's
    workers then keep serving the old routes) or with its children (the proxy gone as a whole).
    The hub's check starts it again: every route back, served by a new proxy, within the check
    interval plus the proxy's own start; requests after that get no 5xx."""
    for user, _, _ in STEADY:
        ch.token(user)
    delay = rng.uniform(0.0, PROXY_CHECK_INTERVAL)
    whole = rng.random() < 0.5
    trial.timing = f"+{delay:.1f} s, {'with its children' if whole else 'the main process'}"
    time.sleep(delay)
    pid = ch.hub.proxy_pid()
    if pid is None:
        raise RuntimeError("no proxy pid file")
    victims = [pid, *(_children(pid) if whole else [])]
    for victim in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
    t0 = time.monotonic()
    if whole and not _wait(lambda: all(ch.reach(u, s, timeout=2) != 200 for u, s, _ in STEADY),
                           5, step=0.05):
        trial.fail("the servers still answered 5 s after the proxy was killed")

    def back() -> bool:
        new = ch.hub.proxy_pid()
        return (new is not None and new != pid and pid_alive(new)
                and all(ch.reach(u, s, timeout=2) == 200 for u, s, _ in STEADY))

    if not _wait(back, 60, step=0.1):
        trial.lost_servers += len(STEADY)
        trial.fail("no new proxy serving every route within 60 s")
        return
    trial.detection = time.monotonic() - t0
    limit = PROXY_CHECK_INTERVAL + PROXY_START_ALLOWANCE
    if trial.detection > limit:
        trial.fail(f"routes back after {trial.detection:.1f} s (limit {limit:.0f} s)")
    for _ in range(10):
        for user, name, _ in STEADY:
            status = ch.reach(user, name)
            if status >= 500:
                trial.http_5xx += 1
                trial.fail(f"{user}/{name} answered {status} after the proxy came back")
        status, _ = ch.request("GET", "/hub/api/")
        if status >= 500:
            trial.http_5xx += 1
            trial.fail(f"/hub/api answered {status} after the proxy came back")
    _check_steady(ch, trial, "after the proxy came back")


# -- 3. slurmctld stopped ----------------------------------------------------------------------------


def _ping_up(ch: Chaos) -> bool:
    try:
        return "is UP" in ch.slurm("scontrol", "ping", check=False, timeout=10)
    except subprocess.SubprocessError:
        return False


def ctld_down(ch: Chaos, trial: Trial, rng: random.Random, ctld_down: float = 60.0,
              **_: Any) -> None:
    """slurmctld stopped for about `ctld_down` seconds: no running server declared dead, the
    health API says why while it is down, and notices the return within 5 s."""
    down = ctld_down * rng.uniform(0.8, 1.2)
    trial.timing = f"down {down:.0f} s"
    sentence = None
    ch.stop_daemon("slurmctld")
    t0 = time.monotonic()
    restarter: threading.Thread | None = None
    try:
        next_check = 0.0
        while time.monotonic() - t0 < down:
            status, body = ch.health()
            if status >= 500:
                trial.http_5xx += 1
            if status == 200 and body.get("ok") is False:
                errors = [w.get("last_error") for w in body["watchers"] if not w.get("ok")]
                sentence = sentence or next((e for e in errors if e), None)
            if time.monotonic() >= next_check:  # the servers keep working meanwhile
                _check_steady(ch, trial, f"{time.monotonic() - t0:.0f} s into the outage",
                              ask_slurm=False)
                next_check = time.monotonic() + 5
            time.sleep(1)
        if sentence is None:
            trial.fail("the health API never said the scheduler was down")
        else:
            trial.notes.append(f"health said: {sentence[:100]}")
    finally:
        restarter = threading.Thread(target=ch.lab_up, daemon=True)
        restarter.start()
    if not _wait(lambda: _ping_up(ch), 60, step=0.1):
        trial.fail("slurmctld did not come back within 60 s")
        restarter.join(120)
        return
    up = time.monotonic()
    ok = _wait(lambda: (r := ch.health())[0] == 200 and r[1].get("ok") is True, 60, step=0.1)
    restarter.join(120)
    if not ok:
        trial.fail("the health API still says the scheduler is down 60 s after its return")
        return
    trial.detection = time.monotonic() - up
    if trial.detection > SCHEDULER_RETURN_LIMIT:
        trial.fail(f"the return was noticed after {trial.detection:.1f} s")
    _check_steady(ch, trial, "after slurmctld returned")


# -- 4. the walltime reached / 5. a compute node lost ------------------------------------------------

END_LIMIT = 5.0  # the watcher's steady tick (4 s) and the hub's reaction


def _jobcomp(ch: Chaos, job_id: int) -> dict[str, str] | None:
    """The job's line in the lab's jobcomp file (how Slurm recorded its end), as a dict."""
    try:
        text = Path(ch.info["slurm"]["jobcomp"]).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(f"JobId={job_id} "):
            return dict(f.split("=", 1) for f in line.split() if "=" in f)
    return None


def _log_time(line: str) -> float | None:
    m = re.match(r"^\[\w (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) ", line)
    return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp() if m else None


def _end_noticed(ch: Chaos, trial: Trial, user: str, name: str, job_id: int, offset: int,
                 recorded: float, words: str, timeout: float = 60) -> None:
    """The hub ends the server and logs why, in words matching `words`, soon after `recorded`
    (the epoch second Slurm recorded the end)."""
    gone = _wait(lambda: ch.server(user, name) is None, timeout, step=0.2)
    lines = [line for line in ch.log_since(offset).splitlines()
             if f"The job {job_id} of " in line and " ended: " in line]
    if not gone:
        trial.wrong_states += 1
        trial.fail(f"the hub still says {user}/{name} runs {timeout:.0f} s after its job ended")
    elif ch.key_lines(user, name):
        trial.fail(f"the tunnel key line of the ended {user}/{name} is still in authorized_keys")
    if not lines:
        trial.fail(f"the hub's log does not say how job {job_id} ended")
        return
    said = lines[0].split(" ended: ", 1)[1].strip()
    trial.notes.append(f"hub: {said}")
    if not re.search(words, said, re.I):
        trial.fail(f"the hub's words for the end do not say {words!r}: {said}")
    noticed = _log_time(lines[0])
    if noticed is not None:
        trial.detection = max(0.0, noticed - recorded)
        if trial.detection > END_LIMIT:
            trial.fail(f"the end was noticed {trial.detection:.1f} s after Slurm recorded it")


def walltime(ch: Chaos, trial: Trial, rng: random.Random, **_: Any) -> None:
    """A server asked for 1 minute ends at its walltime (the launcher ends it at the end signal,
    or Slurm does), with the reason in words in the hub's log and the user's sessions, within one
    watcher tick of the end Slurm records (jobcomp: JobState, EndTime)."""
    user, partition = rng.choice((("alice", "debug"), ("bob", "long")))
    name = f"w{trial.number}-{ch.run_tag}"
    trial.timing = f"{user} on {partition}"
    offset = ch.log_size()
    try:
        ch.spawn(user, name, {"partition": partition, "walltime": "1m"})
        if not ch.wait_ready(user, name, timeout=120):
            raise RuntimeError(f"{user}/{name} did not start")
        job = ch.server_job(user, name)
        if job is None:
            raise RuntimeError(f"no job for {user}/{name}")
        record = _wait(lambda: _jobcomp(ch, job["job_id"]), 180, step=0.5)
        if not record:
            trial.fail(f"Slurm recorded no end of job {job['job_id']} within 3 minutes")
            return
        # The launcher ends the job itself at the end signal (JupyterLab's tabs told first):
        # Slurm records COMPLETED; TIMEOUT when Slurm had to end it.
        trial.notes.append(f"Slurm: {record.get('JobState')}")
        if record.get("JobState") not in ("TIMEOUT", "COMPLETED"):
            trial.fail(f"Slurm ended job {job['job_id']} as {record.get('JobState')}")
        ended = datetime.strptime(record["EndTime"], "%Y-%m-%dT%H:%M:%S").timestamp()
        _end_noticed(ch, trial, user, name, job["job_id"], offset, ended, r"walltime|time limit")
        said = _told(ch, user, job["job_id"])
        if not said or not re.search(r"walltime|time limit", said, re.I):
            trial.fail(f"the user's sessions do not say the time limit was reached: {said!r}")
    finally:
        gone, errors = ch.remove(user, name)
        trial.http_5xx += errors
        if not gone:
            trial.fail(f"{user}/{name} could not be removed")


def node_lost(ch: Chaos, trial: Trial, rng: random.Random, **_: Any) -> None:
    """c2's slurmd killed and the node marked down under bob's running server: the server ends
    with "node ... failed" in words within one watcher tick of Slurm's record; then the node is
    resumed and its slurmd started again."""
    user, name = "bob", f"n{trial.number}-{ch.run_tag}"
    offset = ch.log_size()
    try:
        ch.spawn(user, name, {"partition": "long", "walltime": "0:20:00"})
        if not ch.wait_ready(user, name, timeout=120):
            raise RuntimeError(f"{user}/{name} did not start")
        job = ch.server_job(user, name)
        if job is None or job.get("batch_host") != "c2":
            raise RuntimeError(f"{user}/{name} is not on c2: {job and job.get('batch_host')}")
        delay = rng.uniform(0.0, 3.0)
        trial.timing = f"+{delay:.1f} s"
        time.sleep(delay)
        ch.stop_daemon("slurmd-c2", signal.SIGKILL)
        ch.slurm("scontrol", "update", "nodename=c2", "state=down", "reason=chaos")
        marked = time.time()
        record = _wait(lambda: _jobcomp(ch, job["job_id"]), 60, step=0.2)
        if record:
            trial.notes.append(f"Slurm: {record.get('JobState')}")
            recorded = datetime.strptime(record["EndTime"], "%Y-%m-%dT%H:%M:%S").timestamp()
        else:
            now = ch.server_job(user, name)
            trial.notes.append(f"no jobcomp line; squeue: {now and now['job_state']}")
            recorded = marked
        _end_noticed(ch, trial, user, name, job["job_id"], offset, max(recorded, marked - 1),
                     r"node.*fail|fail.*node")
    finally:
        ch.slurm("scontrol", "update", "nodename=c2", "state=resume", check=False)
        try:
            ch.lab_up()
        except Exception as err:  # noqa: BLE001 - said, and the trial fails
            trial.fail(f"c2 did not come back: {err}")
        gone, errors = ch.remove(user, name)
        trial.http_5xx += errors
        leftover = ch.server_job(user, name)
        if ch.active(leftover):
            trial.orphan_jobs += 1
            trial.fail(f"job {leftover['job_id']} still {leftover['job_state']} after the trial")
            ch.cancel(str(leftover["job_id"]))


# -- 6. the tunnel endpoint restarted -----------------------------------------------------------------


def _kernel(ch: Chaos, user: str, name: str) -> str:
    status, text = ch.request("POST", f"/user/{user}/{name}/api/kernels", ch.token(user), body={},
                              timeout=60)
    if status != 201:
        raise RuntimeError(f"no kernel on {user}/{name}: {status} {text[:200]}")
    return json.loads(text)["id"]


def _execute(ch: Chaos, user: str, name: str, kernel: str, code: str, timeout: float = 30) -> str:
    """Run `code` in the kernel over its websocket (through the proxy); its printed output."""
    import asyncio
    import uuid

    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    url = (ch.hub.url.replace("http://", "ws://")
           + f"/user/{user}/{name}/api/kernels/{kernel}/channels")
    msg_id = uuid.uuid4().hex
    message = {"header": {"msg_id": msg_id, "username": user, "session": uuid.uuid4().hex,
                          "msg_type": "execute_request", "version": "5.3"},
               "parent_header": {}, "metadata": {}, "channel": "shell",
               "content": {"code": code, "silent": False, "store_history": False,
                           "user_expressions": {}, "allow_stdin": False, "stop_on_error": True}}

    async def run() -> str:
        conn = await websocket_connect(HTTPRequest(
            url, headers={"Authorization": f"token {ch.token(user)}"}, request_timeout=timeout))
        out = ""
        try:
            await conn.write_message(json.dumps(message))
            while True:
                raw = await asyncio.wait_for(conn.read_message(), timeout)
                if raw is None:
                    raise RuntimeError("the kernel's websocket closed")
                reply = json.loads(raw)
                if reply.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                kind, content = reply.get("msg_type"), reply.get("content", {})
                if kind == "stream":
                    out += content.get("text", "")
                elif kind == "error":
                    out += f"{content.get('ename')}: {content.get('evalue')}"
                elif kind == "status" and content.get("execution_state") == "idle":
                    return out
        finally:
            conn.close()

    return asyncio.run(run())


def tunnel_restart(ch: Chaos, trial: Trial, rng: random.Random, **_: Any) -> None:
    """The hub host's tunnel endpoint stopped (its sshd sessions with it) and started again:
    the reverse tunnels are back within 10 s of its return, and a kernel survives."""
    user, name, _ = STEADY[0]
    # No wait for "stable" tunnels: a job's ssh whose connection came up reconnects at once
    # (Backoff forgives brief_ups_forgiven short connections per stable_after seconds).
    trial.notes.append(f"tunnels up {time.monotonic() - ch.tunnels_since:.0f} s")
    kernel = _kernel(ch, user, name)
    try:
        value = str(rng.randrange(10**6))
        _execute(ch, user, name, kernel, f"x = {value}")
        delay, down = rng.uniform(0.0, 3.0), rng.uniform(0.0, 5.0)
        trial.timing = f"+{delay:.1f} s, down {down:.1f} s"
        time.sleep(delay)
        port = ch.info["ports"]["tunnel"]
        listen = ch.info["tunnel"]["listen"]
        if ch.pid("tunnel-endpoint") is None:
            raise RuntimeError("the tunnel endpoint is not running")
        ch.stop_daemon("tunnel-endpoint")
        t0 = time.monotonic()
        # The fault took effect: with their sshd sessions gone, no server answers.
        if not _wait(lambda: all(ch.reach(u, s, timeout=2) != 200 for u, s, _ in STEADY), 10,
                     step=0.05):
            trial.fail("the servers still answered 10 s after the tunnel endpoint stopped")
        time.sleep(max(0.0, t0 + down - time.monotonic()))
        restarter = threading.Thread(target=ch.lab_up, daemon=True)
        restarter.start()
        if not _wait(lambda: all(tcp_open(a, port) for a in listen), 60, step=0.05):
            trial.fail("the tunnel endpoint did not listen again within 60 s")
            restarter.join(120)
            return
        listening = time.monotonic()
        back = _wait(lambda: all(ch.reach(u, s, timeout=2) == 200 for u, s, _ in STEADY), 60,
                     step=0.1)
        restarter.join(120)
        ch.tunnels_since = time.monotonic()
        if not back:
            trial.lost_servers += len(STEADY)
            trial.fail("the tunnels were not back 60 s after the endpoint returned")
            return
        trial.detection = time.monotonic() - listening
        trial.notes.append(f"endpoint down {listening - t0:.1f} s")
        if trial.detection > TUNNEL_RETURN_LIMIT:
            trial.fail(f"the tunnels came back {trial.detection:.1f} s after the endpoint")
        status, _ = ch.request("GET", f"/user/{user}/{name}/api/kernels/{kernel}", ch.token(user))
        if status != 200:
            trial.fail(f"the kernel {kernel} answered {status} after the restart")
        else:
            kept = _execute(ch, user, name, kernel, "print(x)").strip()
            if kept != value:
                trial.fail(f"the kernel's x is {kept!r} after the restart, not {value}")
        _check_steady(ch, trial, "after the tunnel endpoint returned")
    finally:
        ch.request("DELETE", f"/user/{user}/{name}/api/kernels/{kernel}", ch.token(user))


# -- 7. the directory stopped --------------------------------------------------------------------------

DIRECTORY_FAILOVER_LIMIT = 2.0
# The authenticator tells logins "unavailable" at once for all_down_retry_interval (5 s) after
# every server failed, then tries again: a directory back is used within that, plus a login.
DIRECTORY_RETURN_LIMIT = 7.0


def _sentence(page: str) -> str:
    """The login page's error sentence."""
    import html

    found = re.search(r'class="login_error"[^>]*>\s*([^<]*?)\s*<', page)
    return html.unescape(found.group(1)) if found else ""


def directory_down(ch: Chaos, trial: Trial, rng: random.Random, directory_down: float = 10.0,
                   **_: Any) -> None:
    """The lab's slapd (the primary) stopped: logins go through the replica in under 2 s. Then
    the replica stopped too: logins get 503 with a sentence, never a 500, and the running
    servers and browser sessions keep working. One directory started again (either): logins work
    again within 7 s of it answering."""
    from auth.authenticator import UNAVAILABLE

    users = ("alice", "bob", "carol")
    first_back = rng.choice(("replica", "primary"))
    down = directory_down * rng.uniform(0.5, 1.5)
    trial.timing = f"both down {down:.0f} s, {first_back} back first"
    try:
        ch.stop_daemon("slapd")
        status, took, page = ch.login("alice", ch.password("alice"))
        if status != 302:
            trial.fail(f"with the primary stopped, alice's login answered {status}: "
                       f"{_sentence(page) or page[:200]}")
        elif took > DIRECTORY_FAILOVER_LIMIT:
            trial.fail(f"with the primary stopped, a login took {took:.2f} s")
        trial.notes.append(f"login through the replica {took:.2f} s")
        session = ch.request("GET", "/hub/api/", timeout=10)[0]
        # Past auth_refresh_age the hub re-reads alice from the directory at her next request.
        time.sleep(AUTH_REFRESH_AGE + 0.5)
        ch.replica.stop()
        t0 = time.monotonic()
        told = set()
        while time.monotonic() - t0 < down:
            user = rng.choice(users)
            status, took, page = ch.login(user, ch.password(user))
            said = _sentence(page)
            if status == 503 and said == UNAVAILABLE:
                told.add(said)
            elif status >= 500 or status == 0:
                trial.http_5xx += 1
                trial.fail(f"with no directory, {user}'s login answered {status}: {said or page[:200]}")
            else:
                trial.fail(f"with no directory, {user}'s login answered {status}: {said or page[:200]}")
            _check_steady(ch, trial, f"{time.monotonic() - t0:.0f} s into the directory outage")
            status = ch.request("GET", "/hub/api/", timeout=10)[0]
            if status != session:
                trial.fail(f"the hub API answered {status} during the directory outage")
            status = ch.browse("alice", "/hub/home")
            if status != 200:
                trial.http_5xx += status >= 500
                trial.fail(f"alice's logged-in session got {status or 'the login page'} for "
                           "/hub/home during the directory outage")
            time.sleep(rng.uniform(0.5, 2.0))
        if not told:
            trial.fail("no login was told that the directory is unavailable")
        # One directory comes back; logins work again soon after it answers.
        if first_back == "replica":
            ch.replica.start()
        else:
            ch.lab_up()
        back = time.monotonic()
        worked = _wait(lambda: ch.login("bob", ch.password("bob"))[0] == 302, 60, step=0.5)
        if not worked:
            trial.fail(f"logins still fail 60 s after the {first_back} came back")
            return
        trial.detection = time.monotonic() - back
        if trial.detection > DIRECTORY_RETURN_LIMIT:
            trial.fail(f"logins worked again {trial.detection:.1f} s after the {first_back} returned")
        status, _, page = ch.login("carol", "not her password")
        if status != 403:
            trial.fail(f"a wrong password after the return answered {status}: {_sentence(page)}")
        _check_steady(ch, trial, "after the directory returned")
    finally:
        if not ch.replica.running():
            ch.replica.start()
        if ch.pid("slapd") is None:
            ch.lab_up()


# -- 8. the job over its memory ------------------------------------------------------------------------


def _told(ch: Chaos, user: str, job_id: int) -> str | None:
    """What the user's own sessions API says of how that job's session ended."""
    status, text = ch.request("GET", "/hub/api/hpcgate/sessions", ch.token(user), timeout=30)
    if status != 200:
        return None

    def find(node: Any) -> str | None:
        if isinstance(node, dict):
            if str(node.get("job_id")) == str(job_id) and node.get("end_text"):
                return str(node["end_text"])
            node = list(node.values())
        if isinstance(node, list):
            for item in node:
                if (found := find(item)) is not None:
                    return found
        return None

    return find(json.loads(text))


def out_of_memory(ch: Chaos, trial: Trial, rng: random.Random, **_: Any) -> None:
    """A server asked for 512 MB; the user opens a file of 300-450 MB through JupyterLab's
    contents API, which reads it whole into the server's memory: the kernel's OOM killer (the
    lab's task/cgroup memory limit) kills the server, Slurm records OUT_OF_MEMORY, the hub ends
    the server "ran out of memory" within a tick and the user's sessions say so; no orphan job."""
    if not ch.info["slurm"].get("memory_enforced"):
        raise RuntimeError("this lab's Slurm does not enforce memory (no writable cgroup v1 memory "
                           "controller, or started without it): nothing can exceed its memory")
    user, partition = rng.choice((("alice", "debug"), ("bob", "long")))
    name = f"m{trial.number}-{ch.run_tag}"
    size = rng.randrange(300, 450) * 1024 * 1024
    trial.timing = f"{user} on {partition}, a {size >> 20} MB file"
    big = Path(ch.info["users"][user]["workdir"]) / f"chaos-big-{name}.bin"
    offset = ch.log_size()
    try:
        ch.spawn(user, name, {"partition": partition, "walltime": "0:10:00", "memory": "512M"})
        if not ch.wait_ready(user, name, timeout=120):
            raise RuntimeError(f"{user}/{name} did not start")
        job = ch.server_job(user, name)
        if job is None:
            raise RuntimeError(f"no job for {user}/{name}")
        with open(big, "wb") as f:  # sparse: no disk used; read back as zeros all the same
            f.truncate(size)
        about = ch.info["users"][user]
        os.chown(big, about["uid"], about["gid"])
        # The request the OOM kill interrupts answers whatever the proxy says of a dead upstream:
        # that is the fault itself, not counted.
        opener = threading.Thread(target=ch.request, daemon=True, args=(
            "GET", f"/user/{user}/{name}/api/contents/{big.name}?content=1&format=base64&type=file",
            ch.token(user)), kwargs={"timeout": 120})
        opener.start()
        record = _wait(lambda: _jobcomp(ch, job["job_id"]), 120, step=0.2)
        if not record:
            trial.fail(f"job {job['job_id']} did not end within 2 minutes of opening the file")
            return
        trial.notes.append(f"Slurm: {record.get('JobState')}")
        if record.get("JobState") != "OUT_OF_MEMORY":
            trial.fail(f"Slurm ended job {job['job_id']} as {record.get('JobState')}")
        ended = datetime.strptime(record["EndTime"], "%Y-%m-%dT%H:%M:%S").timestamp()
        _end_noticed(ch, trial, user, name, job["job_id"], offset, ended, r"out of memory")
        said = _told(ch, user, job["job_id"])
        if not said or not re.search(r"out of memory", said, re.I):
            trial.fail(f"the user's sessions do not say the job ran out of memory: {said!r}")
        opener.join(30)
    finally:
        big.unlink(missing_ok=True)
        gone, errors = ch.remove(user, name)
        trial.http_5xx += errors
        if not gone:
            trial.fail(f"{user}/{name} could not be removed")
        leftover = ch.server_job(user, name)
        if ch.active(leftover):
            trial.orphan_jobs += 1
            trial.fail(f"job {leftover['job_id']} still {leftover['job_state']} after the trial")
            ch.cancel(str(leftover["job_id"]))


# -- 9. the home full at spawn ---------------------------------------------------------------------------


def home_full(ch: Chaos, trial: Trial, rng: random.Random, **_: Any) -> None:
    """carol's working directory (the lab's DIR/home/carol) becomes a small tmpfs, filled up (a
    quota used up): her spawn is refused with a sentence that says her home is full, never a
    500; no job, no tunnel key line, no launch file left. The tmpfs is unmounted afterwards."""
    user = "carol"
    about = ch.info["users"][user]
    home = Path(about["workdir"])
    name = f"f{trial.number}-{ch.run_tag}"
    size_kb = rng.choice((64, 256, 1024))
    trial.timing = f"a {size_kb} KiB home"
    first = max((j["job_id"] for j in ch.jobs()), default=0)
    subprocess.run(["mount", "-t", "tmpfs", "-o",
                    f"size={size_kb}k,mode=0700,uid={about['uid']},gid={about['gid']}",
                    f"chaos-home-{ch.run_tag}", str(home)], check=True, timeout=30)
    try:
        with contextlib.suppress(OSError), open(home / "filler", "wb") as f:  # until ENOSPC
            while True:
                f.write(b"\0" * 65536)
        status, body = ch.api("POST", f"/users/{user}/servers/{name}",
                              {"partition": "debug", "walltime": "0:10:00"}, timeout=60)
        said = body.get("message", "") if isinstance(body, dict) else str(body)
        trial.notes.append(f"{status}: {said[:90]}")
        if status >= 500 or status == 0:
            trial.http_5xx += status >= 500
            trial.fail(f"the spawn answered {status}: {said[:200]}")
        elif status in (201, 202):
            # Accepted: the failure then comes as the spawn's end; wait for it.
            _wait(lambda: ch.server(user, name) is None, 30)
            trial.notes.append("accepted, then failed")
        if status < 500 and "is full" not in said:
            trial.fail(f"the user was not told the home is full: {said[:200]}")
        model = ch.server(user, name)
        if model is not None and (model.get("ready") or model.get("pending")):
            trial.wrong_states += 1
            trial.fail(f"{user}/{name} is {model.get('pending') or 'ready'} with a full home")
        jobs = [j for j in ch.jobs() if j["job_id"] > first and j["name"] == ch.job_name(user, name)]
        if jobs:
            trial.orphan_jobs += len(jobs)
            trial.fail(f"jobs submitted with a full home: {[j['job_id'] for j in jobs]}")
            ch.cancel(*[str(j["job_id"]) for j in jobs])
        if ch.key_lines(user, name):
            trial.fail(f"the tunnel key line of {user}/{name} was left in authorized_keys")
        left = [str(p.relative_to(home)) for p in home.rglob("*launch*")]
        if left:
            trial.fail(f"launch files left in the full home: {left}")
    finally:
        ch.remove(user, name)
        for _ in range(20):  # a process still in the directory makes umount busy for a moment
            if subprocess.run(["umount", str(home)], capture_output=True, timeout=30).returncode == 0:
                break
            time.sleep(0.5)
        else:
            subprocess.run(["umount", "-l", str(home)], check=False, timeout=30)
            trial.fail(f"{home} was busy: unmounted lazily")


# -- the runner ---------------------------------------------------------------------------------------

SCENARIOS: dict[str, Callable[..., None]] = {
    "hub_kill": hub_kill,
    "proxy_kill": proxy_kill,
    "ctld_down": ctld_down,
    "walltime": walltime,
    "node_lost": node_lost,
    "tunnel_restart": tunnel_restart,
    "directory_down": directory_down,
    "out_of_memory": out_of_memory,
    "home_full": home_full,
}
NEEDS_STEADY = {"proxy_kill", "ctld_down", "tunnel_restart", "directory_down"}


def run_scenarios(ch: Chaos, plan: list[tuple[str, int]], rng: random.Random,
                  settings: dict[str, Any] | None = None,
                  say: Callable[[str], None] = print) -> list[Trial]:
    """Each (scenario, trials) of `plan` in turn; every trial recorded, even one that raised."""
    settings = settings or {}
    trials: list[Trial] = []
    try:
        for scenario, count in plan:
            moments = list(settings.get("moments") or MOMENTS)
            order: list[str] = []
            while len(order) < count:  # each moment as often as the others, in random order
                cycle = moments[:]
                rng.shuffle(cycle)
                order += cycle
            for i in range(count):
                trial = Trial(scenario, i + 1)
                try:
                    if ch.hub.proc is None or ch.hub.proc.poll() is not None:
                        ch.restart_hub()  # an earlier trial left it dead
                    if scenario in NEEDS_STEADY:
                        ensure_steady(ch, say)
                    extra = {"moment": order[i]} if scenario == "hub_kill" else {}
                    SCENARIOS[scenario](ch, trial, rng, **settings, **extra)
                except Exception as err:  # noqa: BLE001 - recorded as the trial's failure
                    trial.fail(f"{type(err).__name__}: {err}")
                    say(traceback.format_exc().rstrip())
                trials.append(trial)
                say("  " + trial.line())
    finally:
        with contextlib.suppress(Exception):
            remove_steady(ch)
    return trials
