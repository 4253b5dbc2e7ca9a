"""The watcher's cost on a busy queue: a few hundred held jobs of other users beside ours.

One tick must cost at most 3 controller RPCs (slurmctld's own counters, `sdiag`, as root) and read
only our jobs, however many other jobs the queue holds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from benchmarks.poll_load import sdiag
from gateway.lab import cluster
from schedulers.backends import SlurmScheduler
from schedulers.model import JobRequest, JobState
from schedulers.runners import CommandResult, SudoRunner
from schedulers.watcher import JobWatcher
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
