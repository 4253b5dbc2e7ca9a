"""Slurm through slurmrestd: HTTP in the hub's process instead of forking a command per call.

Authentication is Slurm's JWT: the hub holds the cluster's HS256 key (AuthAltParameters=jwt_key)
and signs short-lived tokens for the user it acts as (claim `sun`). Tokens travel in headers only.
What differs between OpenAPI versions lives in `schedulers.slurmrest.versions`.

The watcher's tick is GET /jobs?update_time=T (one controller RPC). slurmctld answers it with
"nothing changed" while no job of the cluster changed since T, and with every job otherwise (see
`versions`): the client keeps our jobs' last records and serves them while nothing changes, so a
tick on a still job table costs one RPC and no body, however long the queue. T is always
slurmctld's own clock (the listing's `last_update`, or GET /diag's `req_time` for v0.0.38), never
the hub's. What the global change time does not cover is read per job, at most `max_job_reads`
per tick (GET /job/ID: two RPCs on the lab's 22.05, REQUEST_FED_INFO and
REQUEST_JOB_INFO_SINGLE): ids no listing has answered for yet, queued jobs whose estimated start
the backfill scheduler moves without touching it, and any job not read for `refresh_seconds`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import math
import re
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import aiohttp

from schedulers import slurm
from schedulers.backends import read_text_or_empty
from schedulers.errors import CancelError, SchedulerError, SchedulerUnavailable, SubmitError
from schedulers.model import JobRequest, JobStatus, UnsafeValue
from schedulers.slurmrest.versions import (
    DEFAULT_API_VERSION,
    build_jobs_query,
    dialect,
    errors_text,
    parse_controller_time,
    parse_job_answer,
    parse_jobs_answer,
    parse_nodes,
    parse_submit,
)

OFF_LOOP_BYTES = 1 << 20  # answers this large are decoded in a thread, off the hub's loop
OFF_LOOP_JOBS = 2000  # listings this long are read in a thread too
_JOB_ID = re.compile(r"^[0-9]+(_[0-9]+)?$")


class QueueLimitsNotOffered(SchedulerError, NotImplementedError):
    """This transport cannot give the partitions' limits (callers may skip the comparison)."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(key: bytes, user: str, lifespan: int = 600, now: float | None = None) -> str:
    """An HS256 token for `user` as `scontrol token` would issue it."""
    issued = int(now if now is not None else time.time())
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    claims = _b64(json.dumps({"iat": issued, "exp": issued + lifespan, "sun": user},
                             separators=(",", ":")).encode())
    signature = hmac.new(key, f"{header}.{claims}".encode(), hashlib.sha256).digest()
    return f"{header}.{claims}.{_b64(signature)}"


class SlurmRestScheduler:
    """The Scheduler protocol over slurmrestd (see schedulers.backends.SlurmScheduler)."""

    name = "slurm-rest"

    def __init__(self, url: str, jwt_key_file: str, query_user: str = "root",
                 environment: dict[str, str] | None = None, jobcomp_file: str | None = None,
                 timeout: float = 30, api_version: str = DEFAULT_API_VERSION,
                 command_timeout: float | None = None, node_cache_seconds: float = 300,
                 max_job_reads: int = 1, refresh_waiting_seconds: float = 30,
                 refresh_seconds: float = 600, overlap_seconds: int = 1):
        self.dialect = dialect(api_version)  # ValueError naming the supported versions
        self.api_version = api_version
        self.url = url.rstrip("/")
        self._key = Path(jwt_key_file).read_bytes()
        self.query_user = query_user
        self.environment = {"PATH": "/usr/local/bin:/usr/bin:/bin", **(environment or {})}
        self.jobcomp_file = jobcomp_file
        # command_timeout is the site's one timeout for scheduler calls; it wins over `timeout`.
        self.timeout = aiohttp.ClientTimeout(total=command_timeout if command_timeout else timeout)
        self.node_cache_seconds = node_cache_seconds
        self._session: aiohttp.ClientSession | None = None
        self._tokens: dict[str, tuple[str, float]] = {}
        self._nodes: dict[str, str] = {}
        self._nodes_at = float("-inf")
        self.max_job_reads = max_job_reads
        """GET /job/ID per tick at most (2 RPCs each): with the listing a tick stays <= 3 RPCs."""
        self.refresh_waiting_seconds = refresh_waiting_seconds
        """Queued jobs are read again after this (their estimated start moves silently)."""
        self.refresh_seconds = refresh_seconds
        """Any other job is read again after this: a safety net, not the way changes arrive."""
        self.overlap_seconds = overlap_seconds
        """How far before the last listing's time the next update_time goes back."""
        # Our jobs as slurmctld last listed them, and when each was read (monotonic clock).
        self._known: dict[str, JobStatus] = {}
        self._read_at: dict[str, float] = {}
        self._gone: set[str] = set()
        """Ids the controller does not hold (absent from a listing, or "Invalid job id")."""
        self._since: int | None = None
        """slurmctld's time up to which `_known` is complete; None: the next tick reads all."""
        self.requests = 0
        self.bytes_read = 0

    def _token(self, user: str) -> str:
        token, expires = self._tokens.get(user, ("", 0.0))
        if time.time() > expires - 60:
            token = make_jwt(self._key, user, lifespan=600)
            self._tokens[user] = (token, time.time() + 600)
        return token

    async def _request(self, method: str, endpoint: str, user: str, body: Any = None) -> tuple[int, Any]:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        headers = {"X-SLURM-USER-NAME": user, "X-SLURM-USER-TOKEN": self._token(user)}
        try:
            async with self._session.request(method, f"{self.url}/{self.dialect.path(endpoint)}",
                                             json=body, headers=headers) as resp:
                text = await resp.text()
                status = resp.status
            self.requests += 1
            self.bytes_read += len(text)
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            raise SchedulerUnavailable("slurmrestd is not answering.", str(err)) from err
        try:
            if len(text) < OFF_LOOP_BYTES:
                return status, json.loads(text) if text else {}
            # A whole cluster's listing (62 MB with 20,000 jobs): 0.4 s of decoding, not on
            # the hub's event loop.
            return status, await asyncio.to_thread(json.loads, text)
        except ValueError as err:
            raise SchedulerUnavailable("slurmrestd's answer could not be read.", text[:500]) from err

    async def submit(self, req: JobRequest, user: str) -> str:
        if req.node and not self.dialect.can_pin_node:
            raise UnsafeValue(f"slurmrestd {self.api_version} cannot pin a job to a node; "
                              "use the CLI transport")
        status, doc = await self._request("POST", "job/submit", user,
                                          self.dialect.build_submit(req, self.environment))
        job_id = parse_submit(doc)
        if status == 200 and job_id:
            return job_id
        raw = errors_text(doc) or f"HTTP {status}"
        if status in (502, 503, 504) or "Unable to contact slurm controller" in raw:
            raise SchedulerUnavailable("The scheduler is not answering; try again in a minute.", raw)
        raise SubmitError(slurm.explain_submit_error(raw, req), raw)

    async def list_jobs(self) -> dict[str, JobStatus]:
        status, doc = await self._request("GET", "jobs", self.query_user)
        if status != 200:
            raise SchedulerUnavailable("slurmrestd could not list jobs.", errors_text(doc) or str(status))
        return self.dialect.parse_jobs(doc, await self.node_addresses())

    async def status(self, job_ids: Iterable[str]) -> dict[str, JobStatus]:
        """Our jobs that slurmctld holds: one GET /jobs?update_time=T, then GET /diag after a
        listing (v0.0.38), or up to `max_job_reads` GET /job/ID after "nothing changed"."""
        wanted = list(dict.fromkeys(job_ids))
        keep = set(wanted)
        for job_id in [j for j in self._known if j not in keep]:  # untracked by the watcher
            del self._known[job_id]
            self._read_at.pop(job_id, None)
        self._gone &= keep
        if not wanted:
            return {}
        unanswered = [j for j in wanted if j not in self._known and j not in self._gone]
        # Many ids no listing has answered for yet (a hub that just started): one full listing.
        since = self._since if len(unanswered) <= self.max_job_reads else None
        sent = time.monotonic()
        status, doc = await self._request("GET", build_jobs_query(since), self.query_user)
        addresses = await self.node_addresses()
        listed = doc.get("jobs") if isinstance(doc, dict) else None
        if isinstance(listed, list) and len(listed) > OFF_LOOP_JOBS:  # a busy cluster's listing
            answer = await asyncio.to_thread(parse_jobs_answer, status, doc, keep, addresses,
                                             self.dialect)
        else:
            answer = parse_jobs_answer(status, doc, keep, addresses, self.dialect)
        if answer.changed:
            now = time.monotonic()
            for job_id in wanted:
                if job_id in answer.jobs:
                    self._known[job_id], self._read_at[job_id] = answer.jobs[job_id], now
                    self._gone.discard(job_id)
                else:
                    self._known.pop(job_id, None)
                    self._read_at.pop(job_id, None)
                    self._gone.add(job_id)
            packed = answer.packed_at or await self._controller_time_before(sent)
            if packed is not None:
                self._since = max(1, packed - self.overlap_seconds)
            # else: the old T stays, which only makes the next answer a listing again
        else:
            for job_id in self._due(unanswered)[:self.max_job_reads]:
                await self._read_one(job_id)
        return {j: self._known[j] for j in wanted if j in self._known}

    def _due(self, unanswered: list[str]) -> list[str]:
        """Ids to read one by one after "nothing changed": the unanswered first, then the
        longest unread of those whose refresh time has come."""
        now = time.monotonic()

        def limit(job_id: str) -> float:
            state = self._known[job_id].state
            if state.is_final:
                return math.inf  # nothing more to learn
            return self.refresh_waiting_seconds if state.is_waiting else self.refresh_seconds

        stale = sorted((j for j in self._known if now - self._read_at.get(j, 0.0) >= limit(j)),
                       key=lambda j: self._read_at.get(j, 0.0))
        return unanswered + stale

    async def _read_one(self, job_id: str) -> None:
        found = None
        if _JOB_ID.match(job_id):  # anything else never names a Slurm job (nor enters a URL)
            status, doc = await self._request("GET", f"job/{job_id}", self.query_user)
            found = parse_job_answer(status, doc, job_id, await self.node_addresses(), self.dialect)
        if found is None:
            self._known.pop(job_id, None)
            self._read_at.pop(job_id, None)
            self._gone.add(job_id)
        else:
            self._known[job_id], self._read_at[job_id] = found, time.monotonic()
            self._gone.discard(job_id)

    async def _controller_time_before(self, sent: float) -> int | None:
        """slurmctld's clock no later than when the request sent at `sent` (monotonic) reached
        it: GET /diag's time less the seconds since sending, rounded up. None if /diag fails."""
        try:
            status, doc = await self._request("GET", "diag", self.query_user)
        except SchedulerUnavailable:
            return None
        now = parse_controller_time(doc) if status == 200 else None
        if now is None:
            return None
        return now - math.ceil(time.monotonic() - sent)

    async def queue_limits(self) -> dict[str, Any]:
        raise QueueLimitsNotOffered(
            f"Partition limits are not read through slurmrestd ({self.api_version}) yet: compare "
            "the policy with `scontrol show partition` by hand, or run check-config on a site copy "
            "with transport sudo.")

    async def final_status(self, job_ids: Iterable[str]) -> dict[str, JobStatus]:
        if not self.jobcomp_file:
            return {}
        text = await asyncio.to_thread(read_text_or_empty, self.jobcomp_file)
        return slurm.parse_jobcomp(text, list(job_ids))

    async def cancel(self, job_ids: Iterable[str], user: str | None = None) -> None:
        for job_id in job_ids:
            slurm.build_cancel([job_id])  # validates the id
            status, doc = await self._request("DELETE", f"job/{job_id}", user or self.query_user)
            raw = errors_text(doc)
            if status == 200 or "Invalid job id" in raw or "already finished" in raw:
                continue
            raise CancelError(f"Slurm could not cancel job {job_id}: {raw or status}", raw)

    async def node_addresses(self) -> Mapping[str, str]:
        """Node name to NodeAddr, asked again after `node_cache_seconds`; the last good answer
        stands in while slurmrestd cannot give a new one."""
        if time.monotonic() - self._nodes_at > self.node_cache_seconds:
            try:
                status, doc = await self._request("GET", "nodes", self.query_user)
            except SchedulerUnavailable:
                return self._nodes
            if status == 200:
                self._nodes = parse_nodes(doc)
                self._nodes_at = time.monotonic()
        return self._nodes

    async def node_address(self, node: str) -> str | None:
        addresses = await self.node_addresses()
        if node not in addresses:
            self._nodes_at = float("-inf")  # a node added since the last look
            addresses = await self.node_addresses()
        return addresses.get(node)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
