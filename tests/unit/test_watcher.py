"""The watcher's rules, driven by a scripted scheduler: one query per tick, unknown is not gone."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

import pytest

from schedulers.errors import SchedulerUnavailable
from schedulers.model import JobRequest, JobState, JobStatus
from schedulers.watcher import VANISHED, JobWatcher


class ScriptedScheduler:
    """Answers status queries from a mutable table; counts calls."""

    name = "scripted"

    def __init__(self) -> None:
        self.jobs: dict[str, JobStatus] = {}
        self.finals: dict[str, JobStatus] = {}
        self.down = False
        self.status_calls: list[list[str]] = []
        self.final_calls: list[list[str]] = []

    async def submit(self, req: JobRequest, user: str) -> str:
        raise NotImplementedError

    async def status(self, job_ids: Iterable[str]) -> dict[str, JobStatus]:
        ids = sorted(job_ids)
        self.status_calls.append(ids)
        if self.down:
            raise SchedulerUnavailable("controller down", "Unable to contact slurm controller")
        return {j: s for j, s in self.jobs.items() if j in ids}

    async def final_status(self, job_ids: Iterable[str]) -> dict[str, JobStatus]:
        ids = sorted(job_ids)
        self.final_calls.append(ids)
        return {j: s for j, s in self.finals.items() if j in ids}

    async def cancel(self, job_ids: Iterable[str], user: str | None = None) -> None:
        return None

    async def node_address(self, node: str) -> str | None:
        return None


def running(job_id: str) -> JobStatus:
    return JobStatus(job_id, JobState.RUNNING, node="c1")


async def test_one_query_per_tick_for_all_jobs() -> None:
    sched = ScriptedScheduler()
    watcher = JobWatcher(sched)
    for i in range(50):
        sched.jobs[str(i)] = running(str(i))
        watcher._latest[str(i)] = JobStatus(str(i), JobState.UNKNOWN)
    await watcher.tick()
    await watcher.tick()
    assert len(sched.status_calls) == 2
    assert len(sched.status_calls[0]) == 50
    assert all(watcher.latest(str(i)).state is JobState.RUNNING for i in range(50))


async def test_failed_query_makes_jobs_unknown_never_gone_and_recovers() -> None:
    sched = ScriptedScheduler()
    watcher = JobWatcher(sched)
    sched.jobs["7"] = running("7")
    watcher._latest["7"] = JobStatus("7", JobState.UNKNOWN)
    await watcher.tick()
    assert watcher.latest("7").state is JobState.RUNNING

    sched.down = True
    for _ in range(5):
        await watcher.tick()
    status = watcher.latest("7")
    assert status.state is JobState.UNKNOWN and not status.is_final
    assert "not answering" in status.reason_text
    assert sched.final_calls == []  # a failed query is never a reason to look for an ending
    assert watcher._interval() == pytest.approx(min(0.5 * 2**5, 5))  # backs off, but to 5 s at most

    sched.down = False
    await watcher.tick()
    assert watcher.latest("7").state is JobState.RUNNING
    assert watcher.failures == 0


async def test_missing_job_uses_final_record_before_grace() -> None:
    sched = ScriptedScheduler()
    watcher = JobWatcher(sched)
    watcher._latest["9"] = running("9")
    sched.finals["9"] = JobStatus("9", JobState.TIMEOUT, reason="TIMEOUT")
    await watcher.tick()
    assert watcher.latest("9").state is JobState.TIMEOUT
    assert watcher.latest("9").node == "c1"  # kept from what was known


async def test_missing_job_without_record_vanishes_only_after_grace() -> None:
    now = [100.0]
    sched = ScriptedScheduler()
    watcher = JobWatcher(sched, missing_grace=10, clock=lambda: now[0])
    watcher._latest["5"] = running("5")
    await watcher.tick()
    assert watcher.latest("5").state is JobState.RUNNING
    assert watcher._interval() == watcher.fast_interval  # look again soon
    now[0] += 9.9
    await watcher.tick()
    assert watcher.latest("5").state is JobState.RUNNING
    now[0] += 0.2
    await watcher.tick()
    assert watcher.latest("5").state is JobState.FAILED
    assert watcher.latest("5").reason == VANISHED


async def test_job_reappearing_resets_the_grace() -> None:
    now = [0.0]
    sched = ScriptedScheduler()
    watcher = JobWatcher(sched, missing_grace=10, clock=lambda: now[0])
    watcher._latest["5"] = running("5")
    await watcher.tick()
    now[0] = 8
    sched.jobs["5"] = running("5")
    await watcher.tick()
    del sched.jobs["5"]
    now[0] = 15
    await watcher.tick()
    assert watcher.latest("5").state is JobState.RUNNING


async def test_tick_is_fast_while_starting_and_slow_when_steady() -> None:
    sched = ScriptedScheduler()
    watcher = JobWatcher(sched, fast_interval=0.5, slow_interval=15)
    watcher._latest["1"] = JobStatus("1", JobState.PENDING)
    assert watcher._interval() == 0.5
    watcher._latest["1"] = running("1")
    assert watcher._interval() == 15


async def test_subscribers_get_each_change_once() -> None:
    sched = ScriptedScheduler()
    watcher = JobWatcher(sched, fast_interval=0.01, slow_interval=0.01)
    sched.jobs["3"] = JobStatus("3", JobState.PENDING, reason="Resources")
    watcher.track("3")
    seen: list[JobState] = []

    async def follow() -> None:
        async for status in watcher.updates("3"):
            seen.append(status.state)
            if status.is_final:
                return

    task = asyncio.create_task(follow())
    await asyncio.sleep(0.05)
    sched.jobs["3"] = running("3")
    await asyncio.sleep(0.05)
    sched.jobs["3"] = JobStatus("3", JobState.COMPLETED, exit_code=0)
    await asyncio.wait_for(task, 2)
    await watcher.stop()
    assert [s for s in seen if s is not JobState.UNKNOWN] == [
        JobState.PENDING, JobState.RUNNING, JobState.COMPLETED]
    assert len(sched.status_calls) >= 3


async def test_repeated_failures_keep_the_last_known_words() -> None:
    sched = ScriptedScheduler()
    watcher = JobWatcher(sched)
    sched.jobs["4"] = JobStatus("4", JobState.PENDING, reason="Priority", reason_text="Queued")
    watcher._latest["4"] = JobStatus("4", JobState.UNKNOWN)
    await watcher.tick()
    sched.down = True
    for _ in range(3):
        await watcher.tick()
    assert watcher.latest("4").reason_text == "The scheduler is not answering; last known: Queued"


class SurprisingScheduler(ScriptedScheduler):
    """Raises what no one planned for (a ValueError from a runner, a KeyError in a parser)."""

    surprise: Exception | None = None

    async def status(self, job_ids: Iterable[str]) -> dict[str, JobStatus]:
        if self.surprise is not None:
            self.status_calls.append(sorted(job_ids))
            raise self.surprise
        return await super().status(job_ids)


async def test_a_surprise_in_the_query_never_ends_the_watchers_loop() -> None:
    sched = SurprisingScheduler()
    sched.surprise = ValueError("SSHRunner without a service_user needs the user to log in as")
    sched.jobs["7"] = running("7")
    watcher = JobWatcher(sched, fast_interval=0.01, max_backoff=0.02)
    watcher.track("7")
    try:
        await asyncio.sleep(0.2)
        assert watcher._task is not None and not watcher._task.done()  # still looping
        health = watcher.health()
        assert health["failures_in_a_row"] >= 3 and "service_user" in health["last_error"]
        assert health["last_ok"] is None and not health["ok"]
        assert watcher.latest("7").state is JobState.UNKNOWN  # not "gone", not "running"
        sched.surprise = None
        status = await watcher.wait_for("7", lambda s: s.state is JobState.RUNNING, 2)
        assert status.node == "c1"
        health = watcher.health()
        assert health["ok"] and health["failures_in_a_row"] == 0 and health["last_ok"] is not None
    finally:
        await watcher.stop()


async def test_a_controller_back_is_noticed_within_five_seconds_and_logged() -> None:
    sched = ScriptedScheduler()
    watcher = JobWatcher(sched)  # the defaults a hub runs with
    watcher.failures = 50  # down for a long time
    assert watcher._interval() <= 5.0
    sched.jobs["1"] = running("1")
    watcher._latest["1"] = JobStatus("1", JobState.UNKNOWN)
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("hpcgate.watcher")  # may not propagate: it follows the hub's log
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        await watcher.tick()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert watcher.failures == 0
    assert any("answers again" in r.getMessage() for r in records)


def test_the_steady_tick_notices_an_end_within_five_seconds() -> None:
    assert JobWatcher(ScriptedScheduler()).slow_interval <= 5.0
