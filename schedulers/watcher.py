"""One watcher per hub: one scheduler query per tick for every tracked job.

- The tick adapts: fast while any job is starting (pending, held, just submitted, unknown), slow
  when every job runs steadily (at most 5 s: an end is noticed within that), backing off while the
  scheduler errors (up to 5 s: a controller that returns is noticed within that, and one query
  per 5 s does not hammer one that is down).
- Nothing ends the loop: a failure of any kind makes the tracked jobs UNKNOWN, is counted and
  logged, and the next tick tries again. `health()` says how the last queries went.
- A failed query makes the tracked jobs UNKNOWN; it never makes them gone (batchspawner #315).
- A job missing from a good answer is looked up in the final-state source; only if that knows
  nothing either, and the job stays missing for a grace period, is it declared vanished.
- Subscribers get every change of a job's state, reason or node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

from schedulers.backends import Scheduler
from schedulers.errors import SchedulerError
from schedulers.model import JobState, JobStatus

log = logging.getLogger("hpcgate.watcher")

VANISHED = "JobVanished"
UNAVAILABLE = "SchedulerUnavailable"


def _changed(old: JobStatus | None, new: JobStatus) -> bool:
    if old is None:
        return True
    return (old.state, old.reason, old.node, old.estimated_start, old.exit_code) != (
        new.state, new.reason, new.node, new.estimated_start, new.exit_code)


class JobWatcher:
    """Tracks jobs of one scheduler; `track()`, then `updates()` or `latest()`."""

    def __init__(self, scheduler: Scheduler, fast_interval: float = 0.5, slow_interval: float = 4.0,
                 max_backoff: float = 5.0, missing_grace: float = 10.0,
                 clock: Callable[[], float] = time.monotonic,
                 on_query: Callable[[float, bool], None] | None = None):
        self.scheduler = scheduler
        self.on_query = on_query
        """Called after each status query with (seconds, ok): the hub's metrics."""
        self.fast_interval = fast_interval
        self.slow_interval = slow_interval
        self.max_backoff = max_backoff
        self.missing_grace = missing_grace
        self._clock = clock
        self._latest: dict[str, JobStatus] = {}
        self._missing_since: dict[str, float] = {}
        self._starting: set[str] = set()
        self._queues: dict[str, set[asyncio.Queue[JobStatus]]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.failures = 0
        """Failed queries in a row (0 after a good answer)."""
        self.queries = 0
        self.query_seconds = 0.0
        self.last_error: str = ""
        self.last_ok: float | None = None
        """Wall-clock time of the last good answer."""
        self._down_since: float | None = None

    # -- tracking ---------------------------------------------------------------------------------

    def track(self, job_id: str, starting: bool = True) -> None:
        """Follow a job; the next tick comes at once, and ticks stay fast while it starts.

        A job counts as starting until `settled()` is called (its server answers) or it ends:
        RUNNING alone does not mean the server is up, and a job dying then must be seen at once.
        """
        self._latest.setdefault(job_id, JobStatus(job_id, JobState.UNKNOWN, reason_text="Submitted"))
        if starting:
            self._starting.add(job_id)
        self.ensure_running()
        self.poke()

    def settled(self, job_id: str) -> None:
        """The job's work is up: slow ticks are enough for it from now on."""
        self._starting.discard(job_id)

    def untrack(self, job_id: str) -> None:
        self._latest.pop(job_id, None)
        self._missing_since.pop(job_id, None)
        self._starting.discard(job_id)

    @property
    def tracked(self) -> list[str]:
        return list(self._latest)

    def latest(self, job_id: str) -> JobStatus | None:
        return self._latest.get(job_id)

    def poke(self) -> None:
        """Ask now rather than at the next tick (after a submit or a cancel)."""
        self._wake.set()

    def subscribe(self, job_id: str) -> asyncio.Queue[JobStatus]:
        """A queue that receives the job's current status, then every change of it."""
        queue: asyncio.Queue[JobStatus] = asyncio.Queue()
        self._queues.setdefault(job_id, set()).add(queue)
        current = self._latest.get(job_id)
        if current is not None:
            queue.put_nowait(current)
        return queue

    def unsubscribe(self, job_id: str, queue: asyncio.Queue[JobStatus]) -> None:
        self._queues.get(job_id, set()).discard(queue)

    async def updates(self, job_id: str) -> AsyncIterator[JobStatus]:
        """Every change of the job from now on, starting with its current status."""
        queue = self.subscribe(job_id)
        try:
            while True:
                yield await queue.get()
        finally:
            self.unsubscribe(job_id, queue)

    async def wait_for(self, job_id: str, predicate: Callable[[JobStatus], bool],
                       timeout: float | None) -> JobStatus:
        """The first status of the job that satisfies `predicate`, or TimeoutError (None: wait
        as long as it takes)."""
        async def first() -> JobStatus:
            async for status in self.updates(job_id):
                if predicate(status):
                    return status
            raise RuntimeError("unreachable")
        return await asyncio.wait_for(first(), timeout)

    # -- the loop ---------------------------------------------------------------------------------

    def ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="hpcgate-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def health(self) -> dict[str, object]:
        """For operators: whether the last query worked, since when it fails, and why."""
        return {"ok": self.failures == 0 and self.last_ok is not None,
                "failures_in_a_row": self.failures, "last_error": self.last_error,
                "last_ok": self.last_ok, "queries": self.queries,
                "tracked": len(self._latest), "running": self._task is not None
                and not self._task.done()}

    def _interval(self) -> float:
        if self.failures:
            return min(self.fast_interval * 2 ** self.failures, self.max_backoff)
        starting = self._starting or any(s.state.is_waiting or s.state is JobState.UNKNOWN
                                         for s in self._latest.values())
        return self.fast_interval if starting or self._missing_since else self.slow_interval

    async def _run(self) -> None:
        while True:
            # Cleared before the query: a poke that arrives during it asks for another one.
            self._wake.clear()
            if self._latest:
                await self.tick()
            timeout = self._interval() if self._latest else None
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def tick(self) -> None:
        """One query for every tracked job, and the lookups that follow from it."""
        ids = list(self._latest)
        if not ids:
            return
        self.queries += 1
        started = time.perf_counter()
        ok = False
        try:
            found = await self.scheduler.status(ids)
            ok = True
        except Exception as err:  # noqa: BLE001 - nothing may end the loop: counted, logged, retried
            self.failures += 1
            self.last_error = getattr(err, "message", None) or f"{type(err).__name__}: {err}"
            if self._down_since is None:
                self._down_since = time.time()
            if isinstance(err, (SchedulerError, OSError)):
                log.warning("Scheduler query failed (%d in a row): %s", self.failures, err)
            else:  # a bug or a surprise: the traceback once, then one line per failure
                log.error("Scheduler query failed (%d in a row) with %s", self.failures,
                          self.last_error, exc_info=self.failures == 1)
            for job_id in ids:
                old = self._latest.get(job_id)
                if old is None or old.is_final or old.reason == UNAVAILABLE:
                    continue
                self._publish(replace(old, state=JobState.UNKNOWN, reason=UNAVAILABLE,
                                      reason_text=f"The scheduler is not answering; last known: "
                                                  f"{old.reason_text or old.state.value}"))
            return
        finally:
            elapsed = time.perf_counter() - started
            self.query_seconds += elapsed
            if self.on_query is not None:
                self.on_query(elapsed, ok)
        if self.failures:
            log.info("The scheduler answers again after %d failed queries (%.0f s)", self.failures,
                     time.time() - (self._down_since or time.time()))
        self.failures, self._down_since, self.last_ok = 0, None, time.time()
        now = self._clock()
        missing = [j for j in ids if j not in found and not self._latest[j].is_final]
        for job_id, status in found.items():
            self._missing_since.pop(job_id, None)
            self._publish(status)
        if not missing:
            return
        try:
            finals = await self.scheduler.final_status(missing)
        except Exception as err:  # noqa: BLE001 - the jobs stay missing; the grace period decides
            log.warning("Final-state lookup failed: %s", err)
            finals = {}
        for job_id in missing:
            if job_id in finals:
                self._missing_since.pop(job_id, None)
                self._publish(finals[job_id])
                continue
            since = self._missing_since.setdefault(job_id, now)
            if now - since >= self.missing_grace:
                self._missing_since.pop(job_id, None)
                self._publish(JobStatus(job_id, JobState.FAILED, reason=VANISHED,
                                        reason_text="The job left the scheduler and no record says "
                                                    "how it ended."))

    def _publish(self, status: JobStatus) -> None:
        if status.job_id not in self._latest:
            return  # untracked meanwhile
        old = self._latest[status.job_id]
        # Keep what we knew of the node when a later record (jobcomp, UNKNOWN) lacks it.
        if status.node is None and old.node is not None:
            status = replace(status, node=old.node, node_address=old.node_address)
        self._latest[status.job_id] = status
        if status.is_final:
            self._starting.discard(status.job_id)
        if _changed(old, status):
            for queue in self._queues.get(status.job_id, ()):
                queue.put_nowait(status)
