"""Cost of following N jobs: hpcgate's watcher against batchspawner's per-job polling, on a quiet
and on a busy queue.

    python -m benchmarks.poll_load --servers 100 [--background-jobs 20000] [--ticks 5]
                                   [--transport sudo|rest] [--lab-dir /var/tmp/hpcgate-lab-bench]

Submits N sleeping jobs on the lab (as alice, bob and carol in turn) and follows them for the same
number of ticks (a) with hpcgate's JobWatcher (one `squeue -h -t all -j OUR_IDS -O ...` per tick)
and (b) the way batchspawner 1.3 does (`sudo -E -u USER squeue -h -j ID -o '%T %B'`, one per job
per tick). hpcgate runs first on the quiet queue, then both run again after the lab has been given
`--background-jobs` held jobs of other users. Measured per tick: controller RPCs and their time
(slurmctld's own counters, `sdiag`, reset before each side), the hub's CPU (its own process plus
the commands it runs), bytes read from the commands, and wall time. The last line is
`ratio=<batchspawner RPCs / hpcgate RPCs>` on the busy queue.

`--transport rest` follows the jobs through the lab's slurmrestd instead (GET /jobs?update_time=T,
see schedulers.slurmrest.client), in two columns per queue: the first tick of a hub that just
started (a full listing: what every tick costs while any job of the cluster changes from one tick
to the next) and the ticks once nothing changed (one RPC). Its GET /diag calls are REQUEST_STATS_INFO
to slurmctld, which `sdiag` is left out of, so they are counted from the client; slurmrestd's own
CPU (a separate daemon) has its row.

The quiet round is quiet only once the last run's jobs have left slurmctld (MinJobAge, 300 s in
the lab): the columns name the job records it holds. A second run started within that time met
40,200 records, and slurmrestd did not list them within the client's 30 s timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.lab import Lab, cluster
from schedulers.backends import SlurmScheduler
from schedulers.model import JobRequest, JobState
from schedulers.runners import CommandResult, LocalRunner, SudoRunner
from schedulers.slurmrest import SlurmRestScheduler
from schedulers.watcher import JobWatcher

USERS = ("alice", "bob", "carol")
_RPC_LINE = re.compile(
    r"^\s+(REQUEST_\w+|MESSAGE_\w+)\s+\(\s*\d+\)\s+count:(\d+)\s+ave_time:\d+\s+total_time:(\d+)")


def sdiag(env: dict[str, str], reset: bool = False, field: str = "count") -> dict[str, int]:
    """slurmctld's RPC counters by message type (`field` "count", or "total_time" in µs), without
    sdiag's own REQUEST_STATS_INFO; `reset` zeroes them (root only)."""
    full = {**os.environ, **env}
    if reset:
        subprocess.run(["sdiag", "-r"], env=full, check=True, capture_output=True)
        return {}
    out = subprocess.run(["sdiag"], env=full, check=True, capture_output=True, text=True).stdout
    section = out.split("Remote Procedure Call statistics by message type", 1)[1]
    section = section.split("Remote Procedure Call statistics by user", 1)[0]
    counts = {}
    for line in section.splitlines():
        m = _RPC_LINE.match(line)
        if m and m.group(1) != "REQUEST_STATS_INFO":
            counts[m.group(1)] = int(m.group(2) if field == "count" else m.group(3))
    return counts


@dataclass
class Side:
    """One side's figures over its ticks."""

    name: str
    ticks: int = 0
    rpcs: int = 0
    rpc_types: dict[str, int] | None = None
    controller_us: int = 0
    cpu_self: float = 0.0
    cpu_children: float = 0.0
    bytes_read: int = 0
    wall: float = 0.0
    restd_cpu: float | None = None
    """slurmrestd's CPU (the REST transport's daemon, not the hub's process)."""

    def per_tick(self, value: float) -> float:
        return value / max(self.ticks, 1)


class CountingRunner(LocalRunner):
    """The hub's runner, counting the bytes its commands print."""

    bytes_read = 0
    calls = 0

    async def run(self, argv: Sequence[str], **kwargs) -> CommandResult:  # type: ignore[override]
        res = await super().run(argv, **kwargs)
        self.bytes_read += len(res.stdout.encode()) + len(res.stderr.encode())
        self.calls += 1
        return res


def _cpu() -> tuple[float, float]:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def _measure_rpcs(side: Side, env: dict[str, str], ticks_done: int, ticks: int) -> None:
    counts, times = sdiag(env), sdiag(env, field="total_time")
    scale = ticks / max(ticks_done, 1)
    side.rpcs = round(sum(counts.values()) * scale)
    side.rpc_types = counts
    side.controller_us = round(sum(times.values()) * scale)
    side.ticks = ticks


async def _watch(side: Side, env: dict[str, str], job_ids: list[str], ticks: int) -> JobWatcher:
    runner = CountingRunner(env=env)
    sched = SlurmScheduler(runner)
    await sched.node_addresses()  # cached for 5 minutes: not a per-tick cost
    watcher = JobWatcher(sched, fast_interval=0.5)
    sdiag(env, reset=True)
    runner.bytes_read = runner.calls = 0
    self0, kids0 = _cpu()
    for job_id in job_ids:
        watcher.track(job_id)
    # Stop once `ticks` queries have completed: the next one is 0.5 s away, never cut off halfway.
    while runner.calls < ticks:  # noqa: ASYNC110 - polling a counter of the watcher's own loop
        await asyncio.sleep(0.02)
    await watcher.stop()
    self1, kids1 = _cpu()
    side.cpu_self, side.cpu_children = self1 - self0, kids1 - kids0
    side.bytes_read = runner.bytes_read
    side.wall = watcher.query_seconds
    side.ticks = runner.calls
    return watcher


def hpcgate_side(name: str, env: dict[str, str], job_ids: list[str], ticks: int) -> Side:
    side = Side(name)
    watcher = asyncio.run(_watch(side, env, job_ids, ticks))
    seen = sum(1 for j in job_ids if watcher.latest(j).state is not JobState.UNKNOWN)
    assert seen == len(job_ids), f"the watcher saw {seen} of {len(job_ids)} jobs: {watcher.last_error}"
    _measure_rpcs(side, env, side.ticks, side.ticks)
    return side


def batchspawner_side(env: dict[str, str], jobs: list[tuple[str, str]], ticks: int) -> Side:
    side = Side("batchspawner 1.3")
    full = {**os.environ, **env}
    sdiag(env, reset=True)
    self0, kids0 = _cpu()
    t0 = time.perf_counter()
    for _ in range(ticks):
        for user, job_id in jobs:
            # batchspawner 1.3's SlurmSpawner.batch_query_cmd, once per server per poll.
            out = subprocess.run(["sudo", "-E", "-u", user, "squeue", "-h", "-j", job_id,
                                  "-o", "%T %B"], env=full, capture_output=True, text=True)
            assert out.returncode == 0 and out.stdout.strip(), out.stderr
            side.bytes_read += len(out.stdout.encode()) + len(out.stderr.encode())
    side.wall = time.perf_counter() - t0
    self1, kids1 = _cpu()
    side.cpu_self, side.cpu_children = self1 - self0, kids1 - kids0
    _measure_rpcs(side, env, ticks, ticks)
    return side


class CountingRest(SlurmRestScheduler):
    """The hub's slurmrestd client, counting GET /diag (REQUEST_STATS_INFO, which `sdiag` leaves
    out) and the full listings among its answers."""

    diag_calls = 0
    listings = 0

    async def _request(self, method: str, endpoint: str, user: str, body: Any = None
                       ) -> tuple[int, Any]:
        status, doc = await super()._request(method, endpoint, user, body)
        self.diag_calls += endpoint == "diag"
        self.listings += endpoint.startswith("jobs") and status == 200
        return status, doc


def _process_cpu(pid: int | None) -> float:
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _rest_measure(side: Side, watcher: JobWatcher, rest: CountingRest, env: dict[str, str],
                        restd_pid: int | None, ticks: int) -> None:
    """`ticks` ticks by hand, 0.5 s apart as the fast ticks are; CPU counted around each tick."""
    sdiag(env, reset=True)
    diag0, bytes0 = rest.diag_calls, rest.bytes_read
    side.cpu_self = side.wall = 0.0
    side.restd_cpu = 0.0
    for i in range(ticks):
        if i:
            await asyncio.sleep(0.5)
        self0, restd0, t0 = _cpu()[0], _process_cpu(restd_pid), time.perf_counter()
        await watcher.tick()
        side.wall += time.perf_counter() - t0
        side.cpu_self += _cpu()[0] - self0
        side.restd_cpu += _process_cpu(restd_pid) - restd0
        assert watcher.failures == 0, watcher.last_error
    counts, times = sdiag(env), sdiag(env, field="total_time")
    diag = rest.diag_calls - diag0
    side.rpc_types = {**counts, **({"REQUEST_STATS_INFO (GET /diag)": diag} if diag else {})}
    side.rpcs = sum(counts.values()) + diag
    side.controller_us = sum(times.values())
    side.bytes_read = rest.bytes_read - bytes0
    side.ticks = ticks


async def _rest_watch(label: str, info: dict[str, Any], job_ids: list[str], ticks: int,
                      restd_pid: int | None) -> tuple[Side, Side, int]:
    env = info["slurm"]["env"]
    rest = CountingRest(info["slurm"]["rest_url"], info["slurm"]["jwt_key"])
    try:
        await rest.node_addresses()  # cached for 5 minutes: not a per-tick cost
        watcher = JobWatcher(rest)
        for job_id in job_ids:
            watcher.track(job_id)
        await watcher.stop()  # ticks by hand
        first = Side(f"{label}, 1st tick")
        await _rest_measure(first, watcher, rest, env, restd_pid, 1)
        seen = sum(1 for j in job_ids if watcher.latest(j).state is not JobState.UNKNOWN)
        assert seen == len(job_ids), f"the watcher saw {seen} of {len(job_ids)} jobs"
        # Our jobs were just submitted and started: wait until slurmctld's job table is still.
        settle, deadline = 0, time.monotonic() + 60
        while time.monotonic() < deadline:
            listings = rest.listings
            await asyncio.sleep(0.5)
            await watcher.tick()
            if rest.listings == listings:
                break
            settle += 1
        steady = Side(f"{label}, unchanged")
        await _rest_measure(steady, watcher, rest, env, restd_pid, ticks)
        return first, steady, settle
    finally:
        await rest.close()


def rest_sides(label: str, info: dict[str, Any], job_ids: list[str], ticks: int,
               restd_pid: int | None) -> list[Side]:
    first, steady, settle = asyncio.run(_rest_watch(label, info, job_ids, ticks, restd_pid))
    print(f"({label}: {settle} full listings before slurmctld's job table was unchanged)")
    return [first, steady]


def report(sides: list[Side], servers: int, background: int) -> list[str]:
    """The table, one column per side, every figure per tick."""
    rows = [
        ("ticks", lambda s: f"{s.ticks}"),
        ("controller RPCs", lambda s: f"{s.per_tick(s.rpcs):.1f}"),
        ("controller time (ms)", lambda s: f"{s.per_tick(s.controller_us) / 1000:.2f}"),
        ("hub CPU (ms)", lambda s: f"{s.per_tick(s.cpu_self + s.cpu_children) * 1000:.1f}"),
        ("  hub process (ms)", lambda s: f"{s.per_tick(s.cpu_self) * 1000:.1f}"),
        ("  its commands (ms)", lambda s: f"{s.per_tick(s.cpu_children) * 1000:.1f}"),
        ("bytes read", lambda s: f"{s.per_tick(s.bytes_read):.0f}"),
        ("tick time (s)", lambda s: f"{s.per_tick(s.wall):.3f}"),
    ]
    if any(s.restd_cpu is not None for s in sides):
        rows.append(("slurmrestd CPU (ms)", lambda s: "-" if s.restd_cpu is None
                     else f"{s.per_tick(s.restd_cpu) * 1000:.1f}"))
    width = max(22, *(len(s.name) + 2 for s in sides))
    head = max([24, *(len(t) + 4 for s in sides for t in (s.rpc_types or {}))])
    ticks = sorted({s.ticks for s in sides})
    lines = [f"{servers} jobs followed; per tick (averaged over {'/'.join(map(str, ticks))} ticks, see "
             f"the row), {background} held background jobs of other users; columns name every job "
             "record slurmctld holds",
             f"{'':{head}}" + "".join(f"{s.name:>{width}}" for s in sides)]
    lines += [f"{label:{head}}" + "".join(f"{fmt(s):>{width}}" for s in sides)
              for label, fmt in rows]
    types = sorted({t for s in sides for t in (s.rpc_types or {})})
    lines += [f"  {t:<{head - 2}}" + "".join(f"{(s.rpc_types or {}).get(t, 0):>{width}}"
                                             for s in sides) for t in types]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--servers", type=int, default=100)
    parser.add_argument("--ticks", type=int, default=5)
    parser.add_argument("--background-jobs", type=int, default=0,
                        help="held jobs of other users in the queue for the second round")
    parser.add_argument("--lab-dir", "--dir", dest="dir", default="/var/tmp/hpcgate-lab-bench")
    parser.add_argument("--transport", choices=("sudo", "rest"), default="sudo",
                        help="how hpcgate's watcher asks: squeue through sudo, or slurmrestd")
    args = parser.parse_args()

    lab = Lab(args.dir)
    was_up = lab.status()["ok"]
    info = lab.up(nodes=2)
    env = info["slurm"]["env"]
    lab_dir = Path(info["dir"])
    sched = SlurmScheduler(SudoRunner(env=env))
    jobs: list[tuple[str, str]] = []
    added_background = 0
    try:
        async def submit_all() -> None:
            for i in range(args.servers):
                user = USERS[i % len(USERS)]
                req = JobRequest(script="sleep 3600\n", name=f"bench-{i}", memory_mb=100,
                                 output="/dev/null", workdir=info["users"][user]["workdir"])
                jobs.append((user, await sched.submit(req, user)))
        asyncio.run(submit_all())
        ids = [j for _, j in jobs]
        restd_pid = lab.status()["services"].get("slurmrestd", {}).get("pid")

        def hpcgate(label: str) -> list[Side]:
            if args.transport == "rest":
                return rest_sides(f"rest, {label}", info, ids, args.ticks, restd_pid)
            return [hpcgate_side(f"hpcgate, {label}", env, ids, args.ticks)]

        # Labelled by every record slurmctld holds: cancelled jobs count until MinJobAge passes.
        quiet_sides = hpcgate(f"{cluster.job_records(lab_dir)} jobs")
        if args.background_jobs:
            t0 = time.perf_counter()
            added_background = cluster.submit_background_jobs(lab_dir, args.background_jobs, ["bob", "carol"])
            print(f"(submitted {added_background} held background jobs in {time.perf_counter() - t0:.0f} s)")
        background = cluster.background_jobs(lab_dir)
        records = cluster.job_records(lab_dir)
        busy_sides = hpcgate(f"{records} jobs")
        batch = batchspawner_side(env, jobs, args.ticks)
        batch.name = f"batchspawner, {records} jobs"
        sides = [*quiet_sides, *busy_sides, batch]
    finally:
        subprocess.run(["scancel", *[j for _, j in jobs]], env={**os.environ, **env},
                       capture_output=True)
        if added_background:
            cluster.cancel_background_jobs(lab_dir)
        if not was_up:
            lab.down()

    for line in report(sides, args.servers, background):
        print(line)
    for quiet, busy in zip(quiet_sides, busy_sides, strict=True):
        cpu = [s.per_tick(s.cpu_self + s.cpu_children) for s in (quiet, busy)]
        own = [s.per_tick(s.cpu_self) for s in (quiet, busy)]
        what = f" ({busy.name.split(', ')[-1]})" if args.transport == "rest" else ""
        print(f"hpcgate hub CPU busy/quiet{what}: {cpu[1] / max(cpu[0], 1e-9):.2f} (its process "
              f"alone {own[1] / max(own[0], 1e-9):.2f}); bytes busy/quiet: "
              f"{busy.bytes_read / max(quiet.bytes_read, 1):.2f}")
    # The steady tick: the CLI's only one, slurmrestd's once nothing changed.
    print(f"ratio={batch.rpcs / max(busy_sides[-1].rpcs, 1):.1f}")


if __name__ == "__main__":
    main()
