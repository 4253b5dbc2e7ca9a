"""A workshop's storm: N users log in through the login page and start M named servers between
them, on hpcgate's hub and then on batchspawner 1.3's, in one run.

    python -m benchmarks.spawn_storm [--users 50] [--servers 200] [--ramp 30]
                                     [--dir /var/tmp/hpcgate-lab-storm] [--keep]

The lab (`lab up --users N --postgres --node-cpus 256`, one node) runs real Slurm, slapd and
PostgreSQL; each side is a real JupyterHub 6.1 (`LabHub`: nginx proxy, hpcgate's LDAP login over
StartTLS, its database on the lab's PostgreSQL), with named servers. The two sides differ only in
the spawner: `gateway.hub.spawner.BatchSpawner` with the lab's policy, or batchspawner 1.3's
`SlurmSpawner` as its README configures it for Slurm (see benchmarks.spawn_latency).

Each user starts at a point spread over `--ramp` seconds: GET the login page, POST the form
(username, password, _xsrf), GET /hub/home (where a browser lands; the page's xsrf token), then
POST /hub/api/users/NAME/servers/sK for each of their servers at once, with their own cookies.
The jobs run `hpcgate-minimal-server` (gateway/job/minimal_server.py), not JupyterLab: a small
real HTTP server that answers the hub's checks and reports activity, so 200 servers fit on two
cores. The output says so.

Measured per side, over the storm (first login to the last server ready):
- time to all ready (each server answering `GET /user/NAME/sK/api` through the proxy, checked
  once the hub's log has said it started);
- the hub's event-loop lag, p50/p99/max: a probe inside the hub (from its config file) sleeps
  20 ms and records how late it wakes;
- `/hub/api/users/NAME` latency p50/p99 through the proxy, one request every 200 ms;
- controller RPCs (slurmctld's `sdiag`, reset at the start) and the hub's CPU (its process, and the
  commands it ran and reaped);
- the same lag figures for 20 s afterwards, all servers running ("steady").
Then every server is stopped through the API and every job of the storm's users cancelled,
whatever happened. The last line is `ratio=<batchspawner lag p99 / hpcgate lag p99>` (storm).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.poll_load import sdiag
from gateway.lab import Lab
from gateway.lab.hub import LabHub, batchspawner_sudoers

DEFAULT_DIR = "/var/tmp/hpcgate-lab-storm"  # noqa: S108 - root's lab state
NODE_CPUS = 256
# The compute node's processes (slurmd, and every job it starts) run at this nice value: on a
# cluster they have machines of their own, here they share the hub's two cores, and 200 servers
# starting at once would otherwise starve the hub host's processes (hub, PostgreSQL, slurmctld).
NODE_NICE = 10
# PostgreSQL, for the same reason the other way round: a site's database server has cores of its
# own, and JupyterHub waits on its loop for every query's round trip to it.
DATABASE_NICE = -5
MEMORY = "64M"
WALLTIME = "0:30:00"
SIDES = ("hpcgate", "batchspawner")
SERVER_CMD = ["hpcgate-minimal-server"]
PROBE_INTERVAL = 0.02
STEADY_SECONDS = 20
READY_TIMEOUT = 600

# The probe: a task on the hub's own loop (the config file is read inside it), writing
# "<unix time> <ms late>" lines in batches, so that writing costs the loop next to nothing.
LAG_PROBE = """
import asyncio as _asyncio, os as _os, sys as _sys, time as _time

async def _hpcgate_lag_probe(path, interval):
    fd = _os.open(path, _os.O_WRONLY | _os.O_CREAT | _os.O_APPEND, 0o600)
    loop = _asyncio.get_running_loop()
    lines = []
    while True:
        t0 = loop.time()
        await _asyncio.sleep(interval)
        lines.append(f"{{_time.time():.3f}} {{(loop.time() - t0 - interval) * 1000:.3f}}\\n")
        if len(lines) >= 25:
            _os.write(fd, "".join(lines).encode())
            lines.clear()

# Kept referenced for the hub's lifetime (the loop holds tasks only weakly).
_sys.hpcgate_lag_probe = _asyncio.get_running_loop().create_task(
    _hpcgate_lag_probe({path!r}, {interval}))
"""


# --slow-callbacks: asyncio's debug mode logs each callback that holds the loop longer than 50 ms,
# with what it was (costly itself: for finding a cause, not for the figures).
SLOW_CALLBACKS = """
_asyncio.get_running_loop().set_debug(True)
_asyncio.get_running_loop().slow_callback_duration = 0.05
"""


def common_config(per_user: int, probe_path: Path, slow_callbacks: bool = False) -> str:
    return f"""
c.JupyterHub.allow_named_servers = True
c.JupyterHub.named_server_limit_per_user = {per_user}
# A workshop starts more than JupyterHub's default 100 spawns at once.
c.JupyterHub.concurrent_spawn_limit = 0
{LAG_PROBE.format(path=str(probe_path), interval=PROBE_INTERVAL)}
{SLOW_CALLBACKS if slow_callbacks else ""}"""


def hpcgate_policy(per_user: int) -> dict[str, Any]:
    return {"connection": {"mode": "direct"},
            "groups": {"hpc-users": {"max_servers": per_user}},
            "partitions": {"debug": {"default_memory": MEMORY, "default_cpus": 1,
                                     "default_walltime": "30m"}}}


def hpcgate_config() -> str:
    return f"c.BatchSpawner.cmd = {SERVER_CMD!r}\n"


def batchspawner_config(info: dict[str, Any]) -> str:
    """batchspawner's README configuration for Slurm, and what this lab needs (as in
    benchmarks.spawn_latency, for every user instead of alice)."""
    slurm_env = " ".join(f"{k}={v}" for k, v in info["slurm"]["env"].items())
    venv_bin = Path(sys.executable).parent
    homes = str(Path(info["dir"]) / "home")
    return f"""
import batchspawner  # noqa: E402,F401 -- registers its /api/batchspawner handler (README)
c.JupyterHub.spawner_class = "batchspawner.SlurmSpawner"
c.SlurmSpawner.req_partition = "debug"
c.SlurmSpawner.req_runtime = "{WALLTIME}"
c.SlurmSpawner.req_nprocs = "1"
c.SlurmSpawner.req_memory = "{MEMORY}"
c.SlurmSpawner.cmd = {SERVER_CMD!r}
# lab: sudo drops SLURM_CONF, so the Slurm commands get it explicitly
c.SlurmSpawner.batch_submit_cmd = "env {slurm_env} sbatch --parsable"
c.SlurmSpawner.batch_query_cmd = "env {slurm_env} squeue -h -j {{job_id}} -o '%T %B'"
c.SlurmSpawner.batch_cancel_cmd = "env {slurm_env} scancel {{job_id}}"
# lab: the job and its srun step need SLURM_CONF and a PATH that finds the server's command
c.SlurmSpawner.req_keepvars_extra = "PATH,{",".join(info["slurm"]["env"])}"
c.SlurmSpawner.req_prologue = "export PATH={venv_bin}:$PATH HOME=$PWD"
# lab: the job log and working directory in the lab's home of each user, not /home
from batchspawner import SlurmSpawner  # noqa: E402
c.SlurmSpawner.batch_script = SlurmSpawner.batch_script.default_value.replace(
    "{{{{homedir}}}}", {homes!r} + "/{{{{username}}}}")
# lab: the hub cannot resolve the node name squeue prints; use its NodeAddr
c.SlurmSpawner.state_exechost_exp = "{info["nodes"]["c1"]["address"]}"
"""


# -- measuring ----------------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def read_lag(path: Path, start: float, end: float) -> list[float]:
    out = []
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        t, ms = line.split()
        if start <= float(t) <= end:
            out.append(float(ms))
    return out


def proc_cpu(pid: int) -> tuple[float, float]:
    """(the process's own CPU, its reaped children's) in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick


class ApiProbe(threading.Thread):
    """GET /hub/api/users/NAME through the proxy every 200 ms with NAME's own token, timing each
    answer. A token the hub made (not the service's, from the config file): JupyterHub hashes
    configured tokens with 16,384 rounds of SHA-512 at every request, 10-20 ms of the loop's time,
    which would measure the probe rather than the hub."""

    def __init__(self, hub: LabHub, user: str):
        super().__init__(daemon=True)
        self.url = f"{hub.url}/hub/api/users/{user}"
        status, body = api(hub, "POST", f"/users/{user}/tokens", {"expires_in": 3600,
                                                                   "note": "storm probe"})
        if status not in (200, 201):
            raise RuntimeError(f"no token for the API probe: {status} {body}")
        self.token = body["token"]
        self.samples: list[tuple[float, float, int]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            req = urllib.request.Request(  # noqa: S310 - the lab hub's http URL
                self.url, headers={"Authorization": f"token {self.token}"})
            t0 = time.time()
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - the lab hub
                    resp.read()
                    status = resp.status
            except urllib.error.HTTPError as err:
                status = err.code
            except OSError:
                status = 0
            self.samples.append((t0, (time.time() - t0) * 1000, status))
            self.stopping.wait(max(0.0, 0.2 - (time.time() - t0)))

    def latencies(self, start: float, end: float) -> list[float]:
        return [ms for t, ms, status in self.samples if start <= t <= end and status == 200]


# -- the storm ------------------------------------------------------------------------------------

_XSRF_LOGIN = re.compile(r'name="_xsrf" value="([^"]+)"')
_XSRF_PAGE = re.compile(r'xsrf_token: "([^"]+)"')


async def one_user(url: str, user: str, password: str, names: list[str], options: dict[str, Any],
                   delay: float, log: dict[str, Any]) -> None:
    await asyncio.sleep(delay)
    jar = aiohttp.CookieJar(unsafe=True)  # the hub is on 127.0.0.1: aiohttp keeps no IP cookies else
    timeout = aiohttp.ClientTimeout(total=180)
    # A connection per request: nginx's reloads (a route per server) close idle keep-alive
    # connections, and a request sent on one that just closed fails ("Server disconnected").
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(cookie_jar=jar, timeout=timeout, connector=connector) as session:
        t0 = time.time()
        async with session.get(f"{url}/hub/login") as resp:
            page = await resp.text()
        m = _XSRF_LOGIN.search(page)
        if not m:
            raise RuntimeError(f"{user}: no _xsrf field on the login page ({resp.status})")
        form = {"username": user, "password": password, "_xsrf": m.group(1)}
        async with session.post(f"{url}/hub/login", data=form, allow_redirects=False) as resp:
            if resp.status != 302:
                raise RuntimeError(f"{user}: login answered {resp.status}: {(await resp.text())[:300]}")
        async with session.get(f"{url}/hub/home") as resp:
            page = await resp.text()
        m = _XSRF_PAGE.search(page)
        if resp.status != 200 or not m:
            raise RuntimeError(f"{user}: /hub/home answered {resp.status} without an xsrf token")
        log["logins"].append(time.time() - t0)
        headers = {"X-XSRFToken": m.group(1)}

        async def spawn(name: str) -> None:
            path = f"{url}/hub/api/users/{user}/servers/{name}"
            async with session.post(path, json=options, headers=headers) as resp:
                body = await resp.text()
                if resp.status not in (201, 202):
                    log["errors"].append(f"{user}/{name}: {resp.status} {body[:200]}")
                log["spawn_answers"].append(resp.status)

        await asyncio.gather(*(spawn(n) for n in names))


_STARTED = re.compile(r"User (\S+?):(\S+) took ([\d.]+) seconds to start")
# JupyterHub's words for a server that will not be ready: the route could not be added (it is
# stopped then), or start() failed.
_FAILED = re.compile(r"Failed to add (\S+?):(\S+) to proxy|Not starting (\S+)'s server (\S+):")
STALL_SECONDS = 120  # no server started for this long: stop waiting for the rest


def servers_in_log(log: Path, offset: int) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(started, failed) (user, server) pairs in the hub's log since `offset`."""
    with open(log, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    failed = {(m.group(1) or m.group(3), m.group(2) or m.group(4)) for m in _FAILED.finditer(text)}
    started = {(m.group(1), m.group(2)) for m in _STARTED.finditer(text)} - failed
    return started, failed


def answers(hub: LabHub, user: str, name: str) -> bool:
    req = urllib.request.Request(f"{hub.url}/user/{user}/{name}/api",  # noqa: S310 - the lab hub
                                 headers={"Authorization": f"token {hub.service_token}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - the lab hub
            return resp.status == 200 and b"minimal" in resp.read()
    except OSError:
        return False


def api(hub: LabHub, method: str, path: str, body: Any = None,
        timeout: float = 60) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{hub.url}/hub/api{path}", method=method,  # noqa: S310
                                 data=data, headers={"Authorization": f"token {hub.service_token}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - the lab hub
            text = resp.read().decode()
            return resp.status, json.loads(text) if text else None
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")
    except OSError as err:
        return 0, str(err)


def run_side(name: str, info: dict[str, Any], state: Path, users: list[str],
             per_user: int, ramp: float, slow_callbacks: bool = False,
             database: str = "postgresql") -> dict[str, Any]:
    probe = state / "lag.txt"
    extra = common_config(per_user, probe, slow_callbacks)
    if name == "hpcgate":
        hub = LabHub(info, state, extra_config=extra + hpcgate_config(),
                     policy=hpcgate_policy(per_user), ldap_login=True, database=database)
        options: dict[str, Any] = {"partition": "debug"}
    else:
        hub = LabHub(info, state, extra_config=extra + batchspawner_config(info),
                     ldap_login=True, database=database, extra_sudoers=batchspawner_sudoers())
        options = {}
    passwords = json.loads(Path(info["ldap"]["passwords_file"]).read_text())
    names = [f"s{k}" for k in range(1, per_user + 1)]
    env = info["slurm"]["env"]
    figures: dict[str, Any] = {"side": name}
    try:
        hub.start(timeout=120)
        # Out of the measurement: the hub's start, the proxy's first routes, and the first
        # rendering of each page (Jinja compiles a template once), as on a hub that has served
        # pages before the workshop: alice logs in and sees her home page.
        warm: dict[str, Any] = {"logins": [], "errors": [], "spawn_answers": []}
        asyncio.run(one_user(hub.url, "alice", passwords["alice"], [], options, 0, warm))
        api_probe = ApiProbe(hub, users[0])
        time.sleep(2)
        log_offset = hub.log.stat().st_size
        sdiag(env, reset=True)
        cpu0 = proc_cpu(hub.proc.pid)  # type: ignore[union-attr]
        api_probe.start()
        t_start = time.time()
        log: dict[str, Any] = {"logins": [], "errors": [], "spawn_answers": []}

        async def storm() -> None:
            step = ramp / max(len(users) - 1, 1)
            ends = await asyncio.gather(*(one_user(hub.url, u, passwords[u], names, options,
                                                   i * step, log) for i, u in enumerate(users)),
                                        return_exceptions=True)
            # One person's failure is counted, not the end of everyone's storm.
            log["errors"] += [f"{u}: {type(e).__name__}: {e}" for u, e in zip(users, ends, strict=True)
                              if isinstance(e, BaseException)]

        storm_error = None
        try:
            asyncio.run(storm())
        except Exception as err:  # noqa: BLE001 - reported with the figures; cleanup follows
            storm_error = f"{type(err).__name__}: {err}"
        t_requests = time.time()
        wanted = {(u, n) for u in users for n in names}
        deadline = time.monotonic() + READY_TIMEOUT
        started: set[tuple[str, str]] = set()
        failed: set[tuple[str, str]] = set()
        t_ready = None
        progress = (0, time.monotonic())
        t_last = time.time()
        while time.monotonic() < deadline and storm_error is None:
            started, failed = (found & wanted for found in servers_in_log(hub.log, log_offset))
            if len(started) == len(wanted):
                t_ready = time.time()
                break
            if len(started) != progress[0]:
                progress = (len(started), time.monotonic())
                t_last = time.time()
            if len(started | failed) == len(wanted) or (
                    time.monotonic() - progress[1] > STALL_SECONDS):
                break  # the rest will not come
            time.sleep(0.25)
        cpu1 = proc_cpu(hub.proc.pid)  # type: ignore[union-attr]
        rpcs = sdiag(env)
        # A side that never gets every server ready: its storm ends with the last one that did,
        # not with the wait for the rest (an idle loop would dilute its lag).
        t_end = t_ready or t_last
        reachable = sum(answers(hub, u, n) for u, n in sorted(started))
        t_steady = time.time()
        time.sleep(STEADY_SECONDS)
        t_steady_end = time.time()
        api_probe.stopping.set()
        api_probe.join(5)
        lag = read_lag(probe, t_start, t_end)
        steady = read_lag(probe, t_steady, t_steady_end)
        api_ms = api_probe.latencies(t_start, t_end)
        figures.update(
            servers=len(wanted), started=len(started), failed=len(failed), reachable=reachable,
            storm_error=storm_error, errors=log["errors"][:5], error_count=len(log["errors"]),
            requests_s=t_requests - t_start, ready_s=(t_ready - t_start) if t_ready else None,
            login_p50=statistics.median(log["logins"]) if log["logins"] else float("nan"),
            login_p99=percentile(log["logins"], 99),
            lag_p50=percentile(lag, 50), lag_p99=percentile(lag, 99),
            lag_max=max(lag) if lag else float("nan"), lag_n=len(lag),
            steady_p50=percentile(steady, 50), steady_p99=percentile(steady, 99),
            api_p50=percentile(api_ms, 50), api_p99=percentile(api_ms, 99), api_n=len(api_ms),
            rpcs=sum(rpcs.values()), rpc_types=dict(sorted(rpcs.items(), key=lambda kv: -kv[1])[:5]),
            hub_cpu=cpu1[0] - cpu0[0], children_cpu=cpu1[1] - cpu0[1],
            window_s=t_end - t_start)
    finally:
        stop_everything(hub, users, env)
    return figures


def stop_everything(hub: LabHub, users: list[str], env: dict[str, str]) -> None:
    """Every server through the API, then whatever job of the storm's users is left; the hub."""
    try:
        if hub.proc is not None and hub.proc.poll() is None:
            status, models = api(hub, "GET", "/users")
            paths = [f"/users/{m['name']}/servers/{s}" for m in (models if status == 200 else [])
                     for s in m.get("servers", {})]

            async def delete_all() -> None:
                sem = asyncio.Semaphore(20)

                async def one(path: str) -> None:
                    async with sem:
                        await asyncio.to_thread(api, hub, "DELETE", path, None, 120)

                await asyncio.gather(*(one(p) for p in paths))

            asyncio.run(delete_all())
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                status, models = api(hub, "GET", "/users")
                if status != 200 or not any(m.get("servers") for m in models):
                    break
                time.sleep(1)
    finally:
        hub.stop()
        full = {**os.environ, **env}
        for user in users:
            subprocess.run(["scancel", "-u", user], env=full, capture_output=True, timeout=60)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            out = subprocess.run(["squeue", "-h", "-u", ",".join(users), "-o", "%i"], env=full,
                                 capture_output=True, text=True, timeout=60).stdout
            if not out.split():
                break
            time.sleep(1)
        hub.drop_database()


def show(f: dict[str, Any]) -> None:
    ready = f"{f['ready_s']:.1f} s" if f.get("ready_s") else "NOT all ready"
    print(f"{f['side']}: {f['started']}/{f['servers']} started ({f['failed']} failed), "
          f"{f['reachable']} answering through the proxy; all ready in {ready} (requests sent in "
          f"{f['requests_s']:.1f} s)")
    if f["storm_error"] or f["error_count"]:
        print(f"  errors: {f['storm_error'] or ''} {f['error_count']} refused spawns {f['errors']}")
    print(f"  hub event-loop lag, storm: p50 {f['lag_p50']:.1f} ms, p99 {f['lag_p99']:.1f} ms, "
          f"max {f['lag_max']:.0f} ms ({f['lag_n']} samples); steady, all running: "
          f"p50 {f['steady_p50']:.1f} ms, p99 {f['steady_p99']:.1f} ms")
    print(f"  /hub/api/users/NAME through the proxy: p50 {f['api_p50']:.1f} ms, "
          f"p99 {f['api_p99']:.1f} ms ({f['api_n']} requests)")
    print(f"  logins (login page, form, home page): p50 {f['login_p50']:.2f} s, "
          f"p99 {f['login_p99']:.2f} s")
    print(f"  controller RPCs {f['rpcs']} ({f['rpc_types']}); hub CPU {f['hub_cpu']:.1f} s + "
          f"{f['children_cpu']:.1f} s in its commands, over {f['window_s']:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--servers", type=int, default=200, help="in all, spread evenly over users")
    parser.add_argument("--ramp", type=float, default=30, help="seconds over which users start")
    parser.add_argument("--dir", default=DEFAULT_DIR, help="the lab's directory")
    parser.add_argument("--sides", default=",".join(SIDES))
    parser.add_argument("--keep", action="store_true", help="keep the hubs' state directories")
    parser.add_argument("--slow-callbacks", action="store_true",
                        help="log what holds each hub's loop over 50 ms (asyncio debug mode; "
                             "slows the hub: not for figures)")
    parser.add_argument("--database", choices=["postgresql", "sqlite"], default="postgresql",
                        help="the hubs' database (sqlite: a file in each hub's directory, for "
                             "comparison)")
    args = parser.parse_args()
    if args.servers % args.users:
        parser.error("--servers must be a multiple of --users (each user starts as many)")
    per_user = args.servers // args.users
    lab = Lab(args.dir)
    was_up = lab.status()["ok"]
    # Memory is not enforced on this lab's node: batchspawner's job (srun, then
    # batchspawner-singleuser importing JupyterHub) needs more than the 64 MB hpcgate's fits in,
    # and cgroup limits would end it as out of memory; both sides ask for the same.
    os.environ["HPCGATE_LAB_MEMORY_CGROUP"] = "0"
    info = lab.up(nodes=1, users=args.users, postgres=True, node_cpus=NODE_CPUS)
    if info["slurm"].get("memory_enforced"):
        raise SystemExit(f"The lab in {args.dir} enforces memory (it was up before): batchspawner's "
                         f"jobs would run out of memory. Run `hpcgate lab down --dir {args.dir}` "
                         "first.")
    # New jobs and new database sessions inherit these; both are put back at the end.
    niced = {info["pids"]["slurmd-c1"]: NODE_NICE, info["pids"]["postgres"]: DATABASE_NICE}
    for pid, nice in niced.items():
        os.setpriority(os.PRIO_PROCESS, pid, nice)
    users = sorted(u for u in info["users"] if re.fullmatch(r"user\d+", u))[:args.users]
    print(f"spawn storm: {len(users)} users log in through the login page and start {per_user} "
          f"named servers each ({args.servers} in all) over {args.ramp:.0f} s; Slurm node c1 "
          f"declares {NODE_CPUS} cores, each job 1 core and {MEMORY}, its processes at nice "
          f"{NODE_NICE} (a node is another machine); hub database "
          + (f"PostgreSQL ({info['postgres']['socket_dir']}) at nice {DATABASE_NICE} (a database "
             "server has its own cores)" if args.database == "postgresql" else "SQLite")
          + f". The jobs run {' '.join(SERVER_CMD)}, a minimal "
          "single-user server (answers the hub's checks, reports activity), NOT JupyterLab.",
          flush=True)
    state = Path(tempfile.mkdtemp(prefix="hpcgate-storm-hubs-", dir="/var/tmp"))
    state.chmod(0o755)  # each side's hub runs as the lab's unprivileged hub account, below it
    results = []
    try:
        for name in [s for s in SIDES if s in args.sides.split(",")]:
            figures = run_side(name, info, state / name, users, per_user, args.ramp,
                               args.slow_callbacks, args.database)
            results.append(figures)
            show(figures)
            sys.stdout.flush()
    finally:
        for pid in niced:
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, pid, 0)
        if not args.keep:
            shutil.rmtree(state, ignore_errors=True)
        else:
            print(f"hub state kept in {state}")
        if not was_up:
            lab.down()
    by = {f["side"]: f for f in results}
    if len(by) == 2:
        hp, bs = by["hpcgate"], by["batchspawner"]
        print(f"target: hpcgate lag p99 < 50 ms with all ready: {hp['lag_p99']:.1f} ms, "
              f"{'met' if hp['lag_p99'] < 50 and hp['ready_s'] else 'NOT met'}")
        print(f"ratio={bs['lag_p99'] / hp['lag_p99']:.2f}")


if __name__ == "__main__":
    main()
