"""PBS Professional / OpenPBS through its command-line tools, behind the same Scheduler protocol
as SlurmScheduler: qsub as the user (script on stdin), one batched `qstat -x -f -F json` per tick,
qdel as the user, node names resolved by the hub's resolver.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace

from schedulers import pbs
from schedulers.backends import raise_unless_ok
from schedulers.errors import SchedulerError
from schedulers.model import JobRequest, JobStatus
from schedulers.runners import Runner

log = logging.getLogger("hpcgate.pbs")


def resolve_host(name: str) -> str | None:
    """The first address of `name` (IPv4 first: what the proxy and the launcher use), or None."""
    try:
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return None
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    return str(infos[0][4][0]) if infos else None


# Name lookups get threads of their own: a resolver that hangs for many nodes at once must not
# fill the default executor, which the rest of the hub uses.
_RESOLVERS = concurrent.futures.ThreadPoolExecutor(max_workers=4,
                                                   thread_name_prefix="hpcgate-resolve")


class PbsScheduler:
    """PBS through qsub / qstat / qdel. `qstat -x` lists finished jobs too, so final_status is status."""

    name = "pbs"

    def __init__(self, runner: Runner, resolve: Callable[[str], str | None] = resolve_host,
                 node_cache_seconds: float = 300, miss_cache_seconds: float = 30,
                 resolve_timeout: float = 5, queue_cache_seconds: float = 300):
        self.runner = runner
        self._resolve = resolve
        self.node_cache_seconds = node_cache_seconds
        self.miss_cache_seconds = miss_cache_seconds
        self.resolve_timeout = resolve_timeout
        self.queue_cache_seconds = queue_cache_seconds
        self._nodes: dict[str, tuple[str | None, float]] = {}
        self._lookups: dict[str, asyncio.Future[str | None]] = {}  # node -> lookup in its thread
        self._queues: dict[str, pbs.QueueLimits] = {}
        self._queues_at = float("-inf")

    # -- submit -----------------------------------------------------------------------------------

    async def queue_limits(self) -> dict[str, pbs.QueueLimits]:
        """`qstat -Qf -F json`, cached (it also turns a refused qsub into a precise sentence);
        SchedulerError when qstat fails or prints no JSON."""
        if time.monotonic() - self._queues_at > self.queue_cache_seconds:
            res = await self.runner.run(pbs.build_queues_argv())
            raise_unless_ok(res, "`qstat -Qf -F json`")
            self._queues = pbs.parse_queues(res.stdout)
            self._queues_at = time.monotonic()
        return self._queues

    async def submit(self, req: JobRequest, user: str) -> str:
        argv, script = pbs.build_qsub(req)
        res = await self.runner.run(argv, user=user, input=script)
        queue = None
        if res.returncode != 0 and req.partition and pbs.is_limit_error(res.stderr):
            try:
                queue = (await self.queue_limits()).get(req.partition)
            except SchedulerError:
                queue = None  # the plain sentence still says what happened
        return pbs.parse_submit(res.stdout, res.stderr, res.returncode, req, queue)

    # -- status -----------------------------------------------------------------------------------

    async def _query(self, ids: list[str]) -> tuple[dict[str, JobStatus], set[str]]:
        res = await self.runner.run(pbs.build_status(ids))
        parsed = pbs.parse_status(res.stdout, res.stderr, res.returncode)
        gone = {pbs.sequence_number(j) for j in pbs.gone_job_ids(res.stderr)}
        return pbs.match_job_ids(parsed, ids), gone

    async def status(self, job_ids: Iterable[str]) -> dict[str, JobStatus]:
        wanted = list(dict.fromkeys(job_ids))
        if not wanted:
            return {}
        found, gone = await self._query(wanted)
        silent = [j for j in wanted if j not in found and pbs.sequence_number(j) not in gone]
        if len(wanted) > 1 and silent:
            # Some OpenPBS builds print only the first of several ids (openpbs issue #2672) and
            # say nothing of the others: ask for those one by one rather than lose them.
            log.warning("qstat left out %d of %d jobs without a word; asking one by one",
                        len(silent), len(wanted))
            for job_id in silent:
                found.update((await self._query([job_id]))[0])
        return {job_id: await self._with_address(status) for job_id, status in found.items()}

    async def list_jobs(self) -> dict[str, JobStatus]:
        # No -x: the server's current jobs, not its whole history.
        res = await self.runner.run(pbs.build_list_current())
        return pbs.parse_status(res.stdout, res.stderr, res.returncode)

    async def final_status(self, job_ids: Iterable[str]) -> dict[str, JobStatus]:
        # qstat -x keeps finished jobs (while the server's job history lasts).
        return await self.status(job_ids)

    async def cancel(self, job_ids: Iterable[str], user: str | None = None) -> None:
        ids = list(job_ids)
        if not ids:
            return
        res = await self.runner.run(pbs.build_cancel(ids), user=user)
        pbs.parse_cancel(res.stdout, res.stderr, res.returncode)

    # -- nodes ------------------------------------------------------------------------------------

    async def _with_address(self, status: JobStatus) -> JobStatus:
        if not status.node or status.node_address:
            return status
        return replace(status, node_address=await self.node_address(status.node))

    async def node_addresses(self) -> Mapping[str, str]:
        """The nodes resolved so far (PBS has no address attribute: names go to the resolver)."""
        return {name: address for name, (address, _) in self._nodes.items() if address}

    async def node_address(self, node: str) -> str | None:
        """The node's address by the hub's resolver, looked up off the event loop and cached."""
        cached = self._nodes.get(node)
        if cached is not None:
            address, at = cached
            ttl = self.node_cache_seconds if address else self.miss_cache_seconds
            if time.monotonic() - at < ttl:
                return address
        # A lookup in a thread cannot be stopped: one that outlives resolve_timeout is waited on
        # again by the next caller instead of starting another (a resolver that hangs holds at
        # most one thread per node), and its late answer is kept.
        lookup = self._lookups.get(node)
        if lookup is None:
            lookup = asyncio.ensure_future(asyncio.get_running_loop().run_in_executor(
                _RESOLVERS, self._resolve, node))
            self._lookups[node] = lookup

            def finished(done: asyncio.Future[str | None]) -> None:
                self._lookups.pop(node, None)
                if not done.cancelled() and done.exception() is None and done.result():
                    self._nodes[node] = (done.result(), time.monotonic())

            lookup.add_done_callback(finished)
        try:
            address = await asyncio.wait_for(asyncio.shield(lookup), self.resolve_timeout)
        except asyncio.TimeoutError:
            address = None
        if address is None and cached is not None and cached[0]:
            address = cached[0]  # a resolver hiccup must not lose a known node
        self._nodes[node] = (address, time.monotonic())
        return address
