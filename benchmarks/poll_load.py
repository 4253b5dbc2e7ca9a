"""Controller load of following N jobs: hpcgate's watcher against batchspawner's per-job polling.

    python -m benchmarks.poll_load --servers 100 [--ticks 5]

Submits N sleeping jobs on the lab (as alice, bob and carol in turn), then follows all of them for
the same number of ticks (a) with hpcgate's JobWatcher (one `squeue --json` per tick) and (b) the
way batchspawner 1.3 does (`sudo -E -u USER squeue -h -j ID -o '%T %B'`, one per job per tick).
slurmctld's own counters (`sdiag`, reset before each side) count the RPCs. The last line is
`ratio=<batchspawner RPCs / hpcgate RPCs>`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import time

from gateway.lab import Lab
from schedulers.backends import SlurmScheduler
from schedulers.model import JobRequest, JobState
from schedulers.runners import LocalRunner, SudoRunner
from schedulers.watcher import JobWatcher

USERS = ("alice", "bob", "carol")
_RPC_LINE = re.compile(r"^\s+(REQUEST_\w+|MESSAGE_\w+)\s+\(\s*\d+\)\s+count:(\d+)")


def sdiag(env: dict[str, str], reset: bool = False) -> dict[str, int]:
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
        if m and m.group(1) != "REQUEST_STATS_INFO":  # sdiag's own calls
            counts[m.group(1)] = int(m.group(2))
    return counts


async def hpcgate_side(env: dict[str, str], job_ids: list[str], ticks: int) -> tuple[float, int]:
    """The watcher's own loop until it has made `ticks` queries: (seconds spent querying, queries)."""
    watcher = JobWatcher(SlurmScheduler(LocalRunner(env=env)), fast_interval=0.5)
    for job_id in job_ids:
        watcher.track(job_id)
    while watcher.queries < ticks:  # noqa: ASYNC110 - polling a counter of the watcher's own loop
        await asyncio.sleep(0.05)
    await watcher.stop()
    elapsed = watcher.query_seconds
    seen = sum(1 for j in job_ids if watcher.latest(j).state is not JobState.UNKNOWN)
    assert seen == len(job_ids), f"the watcher saw {seen} of {len(job_ids)} jobs"
    return elapsed, watcher.queries


def batchspawner_side(env: dict[str, str], jobs: list[tuple[str, str]], ticks: int) -> float:
    full = {**os.environ, **env}
    t0 = time.perf_counter()
    for _ in range(ticks):
        for user, job_id in jobs:
            # batchspawner 1.3's SlurmSpawner.batch_query_cmd, once per server per poll.
            out = subprocess.run(["sudo", "-E", "-u", user, "squeue", "-h", "-j", job_id,
                                  "-o", "%T %B"], env=full, capture_output=True, text=True)
            assert out.returncode == 0 and out.stdout.strip(), out.stderr
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--servers", type=int, default=100)
    parser.add_argument("--ticks", type=int, default=5)
    parser.add_argument("--dir", default="/var/tmp/hpcgate-lab-bench")
    args = parser.parse_args()

    lab = Lab(args.dir)
    was_up = lab.status()["ok"]
    info = lab.up(nodes=2)
    env = info["slurm"]["env"]
    sched = SlurmScheduler(SudoRunner(env=env))
    jobs: list[tuple[str, str]] = []
    try:
        async def submit_all() -> None:
            for i in range(args.servers):
                user = USERS[i % len(USERS)]
                req = JobRequest(script="sleep 3600\n", name=f"bench-{i}", memory_mb=100,
                                 output="/dev/null", workdir=info["users"][user]["workdir"])
                jobs.append((user, await sched.submit(req, user)))
        asyncio.run(submit_all())
        ids = [j for _, j in jobs]

        sdiag(env, reset=True)
        hp_seconds, hp_ticks = asyncio.run(hpcgate_side(env, ids, args.ticks))
        hp = sdiag(env)
        sdiag(env, reset=True)
        bs_seconds = batchspawner_side(env, jobs, args.ticks)
        bs = sdiag(env)
    finally:
        subprocess.run(["scancel", *[j for _, j in jobs]], env={**os.environ, **env},
                       capture_output=True)
        if not was_up:
            lab.down()

    # The watcher may finish one query beyond `ticks` while stopping: compare per tick.
    hp_total = sum(hp.values()) * args.ticks / hp_ticks
    bs_total = sum(bs.values())
    print(f"{args.servers} jobs followed for {args.ticks} ticks on the lab's slurmctld "
          f"(RPCs counted by sdiag)")
    print(f"{'':24}{'hpcgate watcher':>18}{'batchspawner 1.3':>20}")
    print(f"{'controller RPCs':24}{hp_total:>18.0f}{bs_total:>20}")
    print(f"{'RPCs per tick':24}{hp_total / args.ticks:>18.1f}{bs_total / args.ticks:>20.1f}")
    print(f"{'query time per tick (s)':24}{hp_seconds / hp_ticks:>18.3f}{bs_seconds / args.ticks:>20.3f}")
    print(f"{'processes per tick':24}{1:>18}{args.servers:>20}")
    for name in sorted(set(hp) | set(bs)):
        print(f"  {name:<30}{hp.get(name, 0):>12}{bs.get(name, 0):>20}")
    print(f"ratio={bs_total / max(hp_total, 1):.1f}")


if __name__ == "__main__":
    main()
