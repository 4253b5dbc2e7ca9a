"""Spawn latency: hpcgate's BatchSpawner against batchspawner 1.3's SlurmSpawner, on the lab.

    python -m benchmarks.spawn_latency [--n 5] [--dir /var/tmp/hpcgate-lab-spawnbench] [--keep]

Two real hubs (JupyterHub 6.1 + configurable-http-proxy, `gateway.lab.hub.LabHub`) share one lab:
one with hpcgate's spawner, one with `batchspawner.SlurmSpawner` configured the way its README
describes for Slurm plus only what the lab needs (see `batchspawner_config`). The same server is
asked of both (alice, node c1, 1 core, 2048 MB, 30 minutes on `debug`, JupyterLab), in turns:
hpcgate, batchspawner, hpcgate, ... Each run:

- ready: from the spawn POST to `GET /user/alice/api` answering 200 through the proxy;
- listen: the moment JupyterLab says "is running at" in the job's log (same machine, same clock);
- overhead: ready - listen, what the gateway adds once the server can answer;
- and, from slurmctld's and slurmd's logs (millisecond stamps): POST -> sbatch received
  ("submit"), sbatch -> allocated ("allocate"), allocated -> slurmd launches the batch script
  ("launch"), launch -> listening ("server start").

The server is stopped (DELETE) after each run and the job waited out. Uses (or starts, and then
stops) a lab in its own directory. The last line is
`ratio=<batchspawner median ready / hpcgate median ready>`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway.lab import Lab
from gateway.lab.hub import LabHub, batchspawner_sudoers
from gateway.lab.site import PINNED_NODES, with_changes

USER = "alice"
NODE = "c1"
WALLTIME = "0:30:00"
MEMORY_MB = 2048
DEFAULT_DIR = "/var/tmp/hpcgate-lab-spawnbench"
SIDES = ("hpcgate", "batchspawner")
ACTIVE = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED")
# slurmctld starts batch jobs from its background loop, once a second, and not within
# batch_sched_delay (3 s) of its previous pass (which the last job's end triggers). Every spawn
# starts PAUSE seconds after the previous job is gone, at a set fraction of the wall-clock second:
# the same fraction for both spawners in a round, the fractions of the n rounds evenly spread.
# Otherwise the fixed durations of each side's cycle lock its submits to one phase of that loop,
# and one side waits ~0.9 s for Slurm every time while the other waits ~0.3 s.
PAUSE = 4.0

# "[I 2026-11-22 16:40:01.123 ServerApp] ..." (jupyter_server and JupyterHub alike)
_PY_STAMP = re.compile(r"^\[\w (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) ")
# "[2026-11-22T16:40:01.123] ..." (slurmctld, slurmd)
_SLURM_STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})\] ")


def hpcgate_policy() -> dict[str, Any]:
    """The lab policy with the same job as batchspawner's: debug on c1, 1 core, 2 GB, 30 min."""
    return with_changes(PINNED_NODES, {"connection": {"mode": "direct"}, "partitions": {"debug": {
        "default_memory": f"{MEMORY_MB}M", "default_cpus": 1, "default_walltime": "30m"}}})


def batchspawner_config(info: dict[str, Any]) -> str:
    """batchspawner's README configuration for Slurm, and what this lab needs on top (marked)."""
    slurm_env = " ".join(f"{k}={v}" for k, v in info["slurm"]["env"].items())
    venv_bin = Path(sys.executable).parent
    node_addr = info["nodes"][NODE]["address"]
    workdir = info["users"][USER]["workdir"]
    return f"""
import batchspawner  # noqa: E402,F401 -- registers its /api/batchspawner handler (README)
c.JupyterHub.spawner_class = "batchspawner.SlurmSpawner"
c.SlurmSpawner.req_partition = "debug"
c.SlurmSpawner.req_runtime = "{WALLTIME}"
c.SlurmSpawner.req_nprocs = "1"
c.SlurmSpawner.req_memory = "{MEMORY_MB}M"
c.SlurmSpawner.req_options = "-w {NODE}"
c.SlurmSpawner.default_url = "/lab"
# lab: sudo drops SLURM_CONF, so the Slurm commands get it explicitly
c.SlurmSpawner.batch_submit_cmd = "env {slurm_env} sbatch --parsable"
c.SlurmSpawner.batch_query_cmd = "env {slurm_env} squeue -h -j {{job_id}} -o '%T %B'"
c.SlurmSpawner.batch_cancel_cmd = "env {slurm_env} scancel {{job_id}}"
# lab: the job and its srun step get only <keepvars> (--export): srun needs SLURM_CONF, the
# step needs a PATH that finds batchspawner-singleuser and jupyterhub-singleuser
c.SlurmSpawner.req_keepvars_extra = "PATH,{",".join(info["slurm"]["env"])}"
c.SlurmSpawner.req_prologue = "export PATH={venv_bin}:$PATH HOME={workdir}"
# lab: the job log and working directory (its {{{{homedir}}}}: req_homedir, the local account's
# /home, is no setting) in the lab's home for {USER}, as hpcgate's server; /home is every lab's
from batchspawner import SlurmSpawner  # noqa: E402
c.SlurmSpawner.batch_script = SlurmSpawner.batch_script.default_value.replace("{{{{homedir}}}}",
                                                                              {workdir!r})
# lab: the hub cannot resolve the node name squeue prints; use its NodeAddr
c.SlurmSpawner.state_exechost_exp = "{node_addr}"
"""


def stamp(text: str, pattern: re.Pattern[str]) -> float | None:
    m = pattern.match(text)
    if not m:
        return None
    return datetime.fromisoformat(m.group(1).replace("T", " ")).timestamp()


def first_stamp(lines: list[str], needle: str | re.Pattern[str],
                pattern: re.Pattern[str] = _PY_STAMP) -> float | None:
    for line in lines:
        hit = needle.search(line) if isinstance(needle, re.Pattern) else needle in line
        if hit:
            t = stamp(line, pattern)
            if t is not None:
                return t
    return None


class Side:
    """One hub and the way to find its job's log."""

    def __init__(self, name: str, info: dict[str, Any], state_dir: Path, extra: str = ""):
        self.name = name
        self.info = info
        if name == "hpcgate":
            self.hub = LabHub(info, state_dir, extra_config=extra, policy=hpcgate_policy())
        else:
            self.hub = LabHub(info, state_dir, extra_config=batchspawner_config(info) + extra,
                              extra_sudoers=batchspawner_sudoers())
        self.home = Path(info["users"][USER]["workdir"])  # the lab's home for USER, not /home

    def job_log(self, job_id: str) -> Path:
        if self.name == "hpcgate":
            return self.home / ".hpcgate" / "servers" / "default" / "job.log"
        return self.home / f"jupyterhub_slurmspawner_{job_id}.log"

    def request(self, method: str, path: str, body: Any = None,
                timeout: float = 120) -> tuple[int, str]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(  # noqa: S310 - the hub's own http URL
            f"{self.hub.url}{path}", data=data, method=method,
            headers={"Authorization": f"token {self.hub.service_token}"})
        try:
            with _NO_REDIRECT.open(req, timeout=timeout) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode(errors="replace")
        except OSError as err:
            return 0, str(err)

    def server(self) -> dict[str, Any] | None:
        code, body = self.request("GET", f"/hub/api/users/{USER}", timeout=10)
        if code != 200:
            raise RuntimeError(f"{self.name}: GET user answered {code}: {body}")
        return json.loads(body)["servers"].get("")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_NO_REDIRECT = urllib.request.build_opener(_NoRedirect)


def slurm(env: dict[str, str], *args: str) -> str:
    return subprocess.run(list(args), env={**os.environ, **env}, capture_output=True, text=True,
                          check=True, timeout=30).stdout


def user_jobs(env: dict[str, str]) -> list[dict[str, Any]]:
    return [j for j in json.loads(slurm(env, "squeue", "--json"))["jobs"]
            if j["user_name"] == USER]


def wait_no_active_job(env: dict[str, str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while any(j["job_state"] in ACTIVE for j in user_jobs(env)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{USER}'s job did not end within {timeout:.0f} s")
        time.sleep(0.2)


def read_from(path: Path, offset: int) -> list[str]:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace").splitlines()


def run_once(side: Side, logs: Path) -> dict[str, Any]:
    env = side.info["slurm"]["env"]
    wait_no_active_job(env)
    before = {j["job_id"] for j in user_jobs(env)}
    marks = {p: p.stat().st_size for p in (logs / "slurmctld.log", logs / f"slurmd-{NODE}.log",
                                           side.hub.log)}
    t_post = time.time()
    code, body = side.request("POST", f"/hub/api/users/{USER}/server", {})
    t_answer = time.time()
    if code not in (201, 202):
        raise RuntimeError(f"{side.name}: spawn answered {code}: {body}")
    deadline = time.monotonic() + 300
    while True:
        code, body = side.request("GET", f"/user/{USER}/api", timeout=10)
        if code == 200 and "version" in body:
            t_ready = time.time()
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"{side.name}: not ready after 300 s ({code} {body[:200]})")
        time.sleep(0.01)

    [job] = [j for j in user_jobs(env) if j["job_id"] not in before]
    job_id = str(job["job_id"])
    code, body = side.request("DELETE", f"/hub/api/users/{USER}/server", timeout=120)
    if code not in (202, 204):
        raise RuntimeError(f"{side.name}: stop answered {code}: {body}")
    deadline = time.monotonic() + 120
    while side.server() is not None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{side.name}: server still there 120 s after DELETE")
        time.sleep(0.2)
    wait_no_active_job(env)

    ctld = read_from(logs / "slurmctld.log", marks[logs / "slurmctld.log"])
    slurmd = read_from(logs / f"slurmd-{NODE}.log", marks[logs / f"slurmd-{NODE}.log"])
    hub_log = read_from(side.hub.log, marks[side.hub.log])
    job_log = side.job_log(job_id).read_text(errors="replace").splitlines()
    if side.name == "batchspawner":  # one log per job (hpcgate's server reuses its own)
        side.job_log(job_id).unlink()
    t_submit = first_stamp(ctld, re.compile(rf"_slurm_rpc_submit_batch_job: JobId={job_id}\b"),
                           _SLURM_STAMP)
    t_alloc = first_stamp(ctld, re.compile(rf"(Allocate|Started) JobId={job_id}\b"), _SLURM_STAMP)
    t_launch = first_stamp(slurmd, re.compile(rf"[Ll]aunching batch job {job_id}\b"),
                           _SLURM_STAMP)
    t_first = next((t for t in (stamp(line, _PY_STAMP) for line in job_log) if t), None)
    t_listen = first_stamp(job_log, "is running at")
    # The job telling the hub where it listens (the log line is written when the request ends).
    api = "/hub/api/hpcgate/report" if side.name == "hpcgate" else "/hub/api/batchspawner"
    t_report = None
    for line in hub_log:
        m = re.search(rf"\d\d\d POST {api} .* ([\d.]+)ms$", line)
        if m and (t := stamp(line, _PY_STAMP)) is not None:
            t_report = t - float(m.group(1)) / 1000
            break
    t_hub_up = first_stamp(hub_log, re.compile(rf"User {USER} took [\d.]+ seconds to start"))
    return {
        "side": side.name, "job": job_id, "node": job.get("batch_host"),
        "post": t_post, "answer": t_answer, "ready": t_ready, "submit": t_submit,
        "alloc": t_alloc, "launch": t_launch, "report": t_report, "first_log": t_first,
        "listen": t_listen, "hub_up": t_hub_up, "hub_log": hub_log, "job_log": job_log,
    }


def phases(run: dict[str, Any]) -> dict[str, float | None]:
    def span(a: str, b: str) -> float | None:
        if run[a] is None or run[b] is None:
            return None
        return run[b] - run[a]
    return {
        "ready": span("post", "ready"),
        "overhead": span("listen", "ready"),
        "  hub noticed": span("listen", "hub_up"),
        "  route+reply": span("hub_up", "ready"),
        "post->sbatch": span("post", "submit"),
        "allocate": span("submit", "alloc"),
        "launch": span("alloc", "launch"),
        "server start": span("launch", "listen"),
        "  port reported": span("launch", "report"),
        "  first log line": span("launch", "first_log"),
        "  to listening": span("first_log", "listen"),
    }


def summary(values: list[float | None]) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return f"{'-':>24}"
    return f"{statistics.median(vals):>8.3f} {min(vals):>7.3f}-{max(vals):<7.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=5, help="spawns per spawner")
    parser.add_argument("--dir", default=DEFAULT_DIR, help="the lab's directory")
    parser.add_argument("--keep", action="store_true", help="keep the hubs' state directories")
    parser.add_argument("--dump", action="store_true", help="print each run's hub and job logs")
    parser.add_argument("--seed", type=int, default=1, help="order of the rounds' submit phases")
    parser.add_argument("--sides", default=",".join(SIDES),
                        help="which spawners, comma-separated (default: both)")
    for name in SIDES:
        parser.add_argument(f"--{name}-config", default="",
                            help=f"extra jupyterhub_config.py lines for {name}'s hub (to measure "
                                 "a proposal; the table then describes that configuration)")
    args = parser.parse_args()
    names = [n for n in SIDES if n in args.sides.split(",")]

    lab = Lab(args.dir)
    was_up = lab.status()["ok"]
    info = lab.up(nodes=2)
    logs = Path(info["logs"])
    state = Path(tempfile.mkdtemp(prefix="hpcgate-spawnbench-hubs-", dir="/var/tmp"))
    state.chmod(0o755)  # each side's hub runs as the lab's unprivileged hub account, below it
    sides = [Side(name, info, state / name, getattr(args, f"{name}_config") + "\n")
             for name in names]
    runs: list[dict[str, Any]] = []
    try:
        for side in sides:
            side.hub.start()
            side.hub.add_users([USER])  # with the directory's identity, this lab's home among it
        phases_of_second = [(k + 0.5) / args.n for k in range(args.n)]
        random.Random(args.seed).shuffle(phases_of_second)
        for i in range(args.n):
            for side in sides:
                wait_no_active_job(info["slurm"]["env"])
                time.sleep(PAUSE)
                time.sleep((phases_of_second[i] - time.time()) % 1.0)
                run = run_once(side, logs)
                runs.append(run)
                p = phases(run)
                print(f"run {i + 1} {side.name:<12} job {run['job']:>5} on {run['node']}: "
                      + " ".join(f"{k.strip()}={v:.3f}" for k, v in p.items() if v is not None),
                      flush=True)
                if args.dump:
                    print("\n".join(["--- hub log", *run["hub_log"], "--- job log",
                                     *run["job_log"]]), flush=True)
    finally:
        for side in sides:
            side.hub.stop()
        wait_no_active_job(info["slurm"]["env"])
        if not args.keep:
            shutil.rmtree(state, ignore_errors=True)
        else:
            print(f"hub state kept in {state}")
        if not was_up:
            lab.down()

    by_side = {name: [phases(r) for r in runs if r["side"] == name] for name in names}
    titles = {"hpcgate": "hpcgate", "batchspawner": "batchspawner 1.3"}
    print(f"\n{args.n} spawns each, in turns, on one lab (user {USER}, node {NODE}, 1 core, "
          f"{MEMORY_MB} MB, {WALLTIME}); seconds, median min-max")
    print(f"{'':18}" + "".join(f"{titles[n]:>26}" for n in names))
    for key in phases(runs[0]):
        print(f"{key:18}" + "".join(f"  {summary([p[key] for p in by_side[n]]):>24}"
                                    for n in names))
    if len(names) == len(SIDES):
        hp = statistics.median(p["ready"] for p in by_side["hpcgate"])
        bs = statistics.median(p["ready"] for p in by_side["batchspawner"])
        # Slurm's allocate phase is the same scheduler for both and varies most: without it,
        hp_own = statistics.median(p["ready"] - (p["allocate"] or 0) for p in by_side["hpcgate"])
        bs_own = statistics.median(p["ready"] - (p["allocate"] or 0)
                                   for p in by_side["batchspawner"])
        print(f"ready without Slurm's allocate: hpcgate {hp_own:.3f}, batchspawner {bs_own:.3f} "
              f"(ratio {bs_own / hp_own:.2f})")
        print(f"ratio={bs / hp:.2f}")


if __name__ == "__main__":
    main()
