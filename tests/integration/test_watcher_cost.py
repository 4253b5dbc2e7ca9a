"""The watcher's cost on a busy queue: a few hundred held jobs of other users beside ours.

One tick must cost at most 3 controller RPCs (slurmctld's own counters, `sdiag`, as root) and read
only our jobs, however many other jobs the queue holds: on the CLI transport by naming our ids, on
slurmrestd by asking what changed since the last tick (GET /jobs?update_time=T), with the lab's
real slurmrestd 22.05.8.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.poll_load import sdiag
from gateway.lab import cluster
from schedulers.backends import SlurmScheduler
from schedulers.model import JobRequest, JobState
from schedulers.runners import CommandResult, SudoRunner
from schedulers.slurmrest import SlurmRestScheduler
from schedulers.watcher import VANISHED, JobWatcher
from tests.helpers.lab import workdir

pytestmark = pytest.mark.lab

BACKGROUND = 300
OURS = 3


class RecordingRunner(SudoRunner):
    """The lab's runner, keeping each command and what it printed."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.calls: list[tuple[list[str], CommandResult]] = []

    async def run(self, argv, *args, **kwargs) -> CommandResult:  # type: ignore[override]
        res = await super().run(argv, *args, **kwargs)
        self.calls.append((list(argv), res))
        return res


@pytest.fixture(scope="module")
def busy_queue(lab: dict) -> Iterator[int]:
    """BACKGROUND held jobs of bob and carol, cancelled after the module."""
    lab_dir = Path(lab["dir"])
    cluster.submit_background_jobs(lab_dir, BACKGROUND, ["bob", "carol"])
    try:
        yield cluster.background_jobs(lab_dir)
    finally:
        cluster.cancel_background_jobs(lab_dir)


@pytest.fixture
async def our_jobs(lab: dict, busy_queue: int) -> AsyncIterator[tuple[RecordingRunner, list[str]]]:
    runner = RecordingRunner(env=lab["slurm"]["env"])
    sched = SlurmScheduler(runner)
    req = JobRequest(script="sleep 300\n", name="cost-test", memory_mb=100, output="/dev/null",
                     workdir=str(workdir(lab, "alice")), node="c1")
    ids = [await sched.submit(req, "alice") for _ in range(OURS)]
    try:
        yield runner, ids
    finally:
        await sched.cancel(ids, user="alice")


async def test_one_tick_costs_at_most_three_rpcs_and_reads_only_our_jobs(
        lab: dict, busy_queue: int, our_jobs: tuple[RecordingRunner, list[str]]) -> None:
    assert busy_queue >= BACKGROUND
    runner, ids = our_jobs
    sched = SlurmScheduler(runner)
    await sched.node_addresses()  # the node cache (sinfo, every 5 minutes) is not the tick's cost
    watcher = JobWatcher(sched)
    for job_id in ids:
        watcher.track(job_id, starting=False)
    await watcher.stop()  # tick by hand: exactly one query
    runner.calls.clear()
    env = lab["slurm"]["env"]
    sdiag(env, reset=True)
    await watcher.tick()
    rpcs = sdiag(env)

    assert sum(rpcs.values()) <= 3, rpcs
    assert watcher.failures == 0, watcher.last_error
    assert all(watcher.latest(j).state in (JobState.RUNNING, JobState.PENDING) for j in ids)
    ((argv, res),) = runner.calls
    assert argv[0] == "squeue" and "--json" not in argv
    lines = res.stdout.splitlines()
    assert sorted(line.split("|")[0] for line in lines) == sorted(ids)  # nobody else's job
    assert len(res.stdout) < 200 * OURS


async def test_an_id_the_controller_forgot_is_missing_not_a_failure(
        lab: dict, busy_queue: int, our_jobs: tuple[RecordingRunner, list[str]]) -> None:
    runner, ids = our_jobs
    sched = SlurmScheduler(runner)
    forgotten = "99999999"
    assert await sched.status([forgotten]) == {}  # squeue exits 1: "Invalid job id specified"
    found = await sched.status([forgotten, *ids])  # squeue exits 0 and leaves it out
    assert set(found) == set(ids)


# -- slurmrestd -------------------------------------------------------------------------------------


class RecordingRest(SlurmRestScheduler):
    """The lab's slurmrestd client, keeping each request's method, endpoint and HTTP status."""

    def __init__(self, lab: dict) -> None:
        super().__init__(lab["slurm"]["rest_url"], lab["slurm"]["jwt_key"],
                         jobcomp_file=lab["slurm"]["jobcomp"])
        self.calls: list[tuple[str, str, int]] = []

    async def _request(self, method: str, endpoint: str, user: str,
                       body: Any = None) -> tuple[int, Any]:
        status, doc = await super()._request(method, endpoint, user, body)
        self.calls.append((method, endpoint, status))
        return status, doc


async def _rest_tick(watcher: JobWatcher, rest: RecordingRest, env: dict[str, str]
                     ) -> tuple[list[tuple[str, str, int]], int, int]:
    """One tick by hand: its requests, slurmctld's RPCs for it, and the bytes it read."""
    rest.calls.clear()
    before = rest.bytes_read
    sdiag(env, reset=True)
    await watcher.tick()
    # Only reads: a job ending meanwhile brings its node's messages (epilog, completion). sdiag
    # leaves out REQUEST_STATS_INFO (its own RPC), which GET /diag is too: counted from the calls.
    reads = {t: n for t, n in sdiag(env).items() if t.startswith("REQUEST_") and "_INFO" in t}
    rpcs = sum(reads.values()) + sum(1 for _, endpoint, _ in rest.calls if endpoint == "diag")
    assert watcher.failures == 0, watcher.last_error
    return list(rest.calls), rpcs, rest.bytes_read - before


async def _until_quiet(watcher: JobWatcher, rest: RecordingRest, env: dict[str, str]
                       ) -> tuple[list[tuple[str, str, int]], int, int]:
    """Ticks until one hears "nothing changed" (slurmctld's job table has a single change time:
    any change of any job, ours just started, makes the next answer a full listing)."""
    deadline = time.monotonic() + 30
    while True:
        calls, rpcs, read = await _rest_tick(watcher, rest, env)
        assert rpcs <= 3, calls
        if calls[0][2] == 304 or time.monotonic() > deadline:
            return calls, rpcs, read
        await asyncio.sleep(1)


async def test_rest_tick_asks_what_changed_since_the_last_and_sees_our_job_change(
        lab: dict, busy_queue: int, our_jobs: tuple[RecordingRunner, list[str]]) -> None:
    runner, ids = our_jobs
    env = lab["slurm"]["env"]
    rest = RecordingRest(lab)
    try:
        await rest.node_addresses()  # the node cache (every 5 minutes) is not the tick's cost
        watcher = JobWatcher(rest)
        for job_id in ids:
            watcher.track(job_id, starting=False)
        await watcher.stop()  # tick by hand

        # A hub that just started learns every tracked job from one full listing.
        calls, rpcs, listing_bytes = await _rest_tick(watcher, rest, env)
        assert calls[0] == ("GET", "jobs", 200) and rpcs <= 3
        assert all(watcher.latest(j).state in (JobState.RUNNING, JobState.PENDING) for j in ids)
        assert listing_bytes > 1000 * busy_queue  # every job of the queue, ours and the others'

        # Once nothing changes: one RPC, a few bytes, and our jobs' states from the cache.
        calls, rpcs, read = await _until_quiet(watcher, rest, env)
        ((method, endpoint, status),) = calls
        assert (method, status) == ("GET", 304) and endpoint.startswith("jobs?update_time="), calls
        assert rpcs == 1 and read < 100
        assert all(watcher.latest(j).state in (JobState.RUNNING, JobState.PENDING) for j in ids)

        # One of our jobs ends between two ticks: the next tick's answer carries it.
        await SlurmScheduler(runner).cancel([ids[0]], user="alice")
        calls, rpcs, _ = await _rest_tick(watcher, rest, env)
        assert calls[0][0] == "GET" and calls[0][1].startswith("jobs?update_time="), calls
        assert calls[0][2] == 200 and rpcs <= 3
        deadline = time.monotonic() + 15
        while not watcher.latest(ids[0]).is_final and time.monotonic() < deadline:  # COMPLETING
            await asyncio.sleep(0.5)
            calls, rpcs, _ = await _rest_tick(watcher, rest, env)
            assert calls[0][1].startswith("jobs?update_time=") and rpcs <= 3, calls
        assert watcher.latest(ids[0]).state is JobState.CANCELLED
        assert all(watcher.latest(j).state is JobState.RUNNING for j in ids[1:])
    finally:
        await rest.close()


async def test_rest_resolves_jobs_the_controller_does_not_hold(
        lab: dict, busy_queue: int, our_jobs: tuple[RecordingRunner, list[str]]) -> None:
    """Ids slurmctld no longer holds (as after MinJobAge) are reported missing, so the watcher
    resolves them (final-state file, else VANISHED): on a hub's first tick through the full
    listing, and later, while nothing changes, through GET /job/ID."""
    _, ids = our_jobs
    env = lab["slurm"]["env"]
    forgotten, later = "99999990", "99999991"
    rest = RecordingRest(lab)
    try:
        await rest.node_addresses()
        watcher = JobWatcher(rest, missing_grace=0)
        for job_id in (*ids, forgotten):
            watcher.track(job_id, starting=False)
        await watcher.stop()

        calls, _, _ = await _rest_tick(watcher, rest, env)
        assert calls[0] == ("GET", "jobs", 200)
        assert all(watcher.latest(j).state in (JobState.RUNNING, JobState.PENDING) for j in ids)
        gone = watcher.latest(forgotten)
        assert (gone.state, gone.reason) == (JobState.FAILED, VANISHED)

        await _until_quiet(watcher, rest, env)
        watcher.track(later, starting=False)
        await watcher.stop()
        calls, rpcs, _ = await _rest_tick(watcher, rest, env)
        if calls[0][2] == 304:  # nothing changed: the new id is read by itself
            assert calls[1:] == [("GET", f"job/{later}", 500)] and rpcs == 3  # FED_INFO too
        else:  # some job changed meanwhile: the listing answered for it
            assert len(calls) <= 2 and rpcs <= 3
        assert (watcher.latest(later).state, watcher.latest(later).reason) == (JobState.FAILED,
                                                                              VANISHED)
    finally:
        await rest.close()
