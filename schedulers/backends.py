"""Schedulers: the pure builders and parsers of one batch system, run through a runner.

A `Scheduler` is what the watcher and the spawner talk to. Submitting and cancelling happen as the
job's user; the batched status query runs as the hub's own identity, once for every job.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

from schedulers import slurm
from schedulers.durations import parse_slurm_time
from schedulers.errors import SchedulerUnavailable
from schedulers.model import JobRequest, JobStatus
from schedulers.runners import CommandResult, Runner
from schedulers.slurm_partitions import (
    NodeInfo,
    PartitionLimits,
    build_node_states_argv,
    build_nodes_argv,
    build_partitions_argv,
    parse_nodes,
    parse_partitions,
    partition_obstacle,
)


class Scheduler(Protocol):
    name: str

    async def submit(self, req: JobRequest, user: str) -> str: ...

    async def status(self, job_ids: Iterable[str]) -> dict[str, JobStatus]:
        """Every job the scheduler still lists, among `job_ids`; raises SchedulerUnavailable."""
        ...

    async def final_status(self, job_ids: Iterable[str]) -> dict[str, JobStatus]:
        """How jobs that the scheduler no longer lists ended, where a record of it exists."""
        ...

    async def list_jobs(self) -> dict[str, JobStatus]:
        """Every job the scheduler lists now, whoever owns it (`hpcgate jobs orphans`)."""
        ...

    async def queue_limits(self) -> Mapping[str, Any]:
        """Each partition (queue) by name with the limits the scheduler enforces, for
        `hpcgate check-config` to compare with the policy; SchedulerError with a sentence."""
        ...

    async def cancel(self, job_ids: Iterable[str], user: str | None = None) -> None: ...

    async def node_address(self, node: str) -> str | None: ...

    async def node_addresses(self) -> Mapping[str, str]:
        """Every node's address the scheduler knows (cached), so the launcher binds the one the
        hub will route to."""
        ...


def _sinfo_time_limit(text: str) -> timedelta | None:
    # Only used to word a refusal better: an unreadable limit just leaves Slurm's own message.
    try:
        return parse_slurm_time(text)
    except ValueError:
        return None


class SlurmScheduler:
    """Slurm through its command-line tools (one `squeue -j OUR_IDS`: two or three controller
    RPCs per tick, whatever the length of the queue)."""

    name = "slurm"

    def __init__(self, runner: Runner, jobcomp_file: str | None = None, use_sacct: bool = False,
                 node_cache_seconds: float = 300):
        self.runner = runner
        self.jobcomp_file = jobcomp_file
        self.use_sacct = use_sacct
        self.node_cache_seconds = node_cache_seconds
        self._nodes: dict[str, str] = {}
        self._nodes_at = 0.0
        self._partition_limits: dict[str, timedelta | None] = {}
        self._default_partition: str | None = None
        self._obstacles: dict[str, tuple[float, str | None]] = {}

    obstacle_cache_seconds = 20.0

    async def _partition_max_walltime(self, partition: str | None) -> timedelta | None:
        if not self._partition_limits:
            res = await self.runner.run(["sinfo", "-h", "-o", "%P %l"])
            for line in res.stdout.splitlines():
                name, _, limit = line.partition(" ")
                if name.endswith("*"):  # the default partition
                    name = name[:-1]
                    self._default_partition = name
                self._partition_limits[name] = _sinfo_time_limit(limit)
        return self._partition_limits.get(partition or self._default_partition or "")

    async def submit(self, req: JobRequest, user: str) -> str:
        argv, script = slurm.build_submit(req)
        res = await self.runner.run(argv, user=user, input=script)
        limit = None
        if res.returncode != 0 and req.walltime is not None:
            try:
                limit = await self._partition_max_walltime(req.partition)
            except SchedulerUnavailable:
                limit = None
            if req.partition is None and self._default_partition:
                req = replace(req, partition=self._default_partition)  # name it in the message
        return slurm.parse_submit(res.stdout, res.stderr, res.returncode, req, limit)

    async def list_jobs(self) -> dict[str, JobStatus]:
        res = await self.runner.run(slurm.build_list_jobs())
        nodes = await self.node_addresses()
        return slurm.parse_status(res.stdout, res.stderr, res.returncode, nodes)

    async def status(self, job_ids: Iterable[str]) -> dict[str, JobStatus]:
        # Only our ids: what is read stays the size of our jobs, whatever the queue's length.
        wanted = dict.fromkeys(job_ids)
        if not wanted:
            return {}
        res = await self.runner.run(slurm.build_status(wanted))
        found = slurm.parse_status_lines(res.stdout, res.stderr, res.returncode,
                                         await self.node_addresses())
        return {k: v for k, v in found.items() if k in wanted}

    async def queue_limits(self) -> dict[str, PartitionLimits]:
        """`scontrol show partition`: every partition's limits as slurmctld enforces them."""
        res = await self.runner.run(build_partitions_argv())
        raise_unless_ok(res, "`scontrol show partition`")
        return parse_partitions(res.stdout)

    async def node_limits(self) -> dict[str, NodeInfo]:
        """`scontrol show node`: every node's size and address (node sizes bound the limits)."""
        res = await self.runner.run(build_nodes_argv())
        raise_unless_ok(res, "`scontrol show node`")
        return parse_nodes(res.stdout)

    async def final_status(self, job_ids: Iterable[str]) -> dict[str, JobStatus]:
        ids = list(job_ids)
        if not ids:
            return {}
        if self.jobcomp_file:
            text = await asyncio.to_thread(read_text_or_empty, self.jobcomp_file)
            found = slurm.parse_jobcomp(text, ids)
            if found or not self.use_sacct:
                return found
        if self.use_sacct:
            res = await self.runner.run(slurm.build_sacct(ids))
            if res.returncode != 0:
                raise SchedulerUnavailable("Slurm accounting is not answering.", res.stderr)
            return slurm.parse_sacct(res.stdout)
        return {}

    async def cancel(self, job_ids: Iterable[str], user: str | None = None) -> None:
        ids = list(job_ids)
        if not ids:
            return
        res = await self.runner.run(slurm.build_cancel(ids), user=user)
        slurm.parse_cancel(res.stdout, res.stderr, res.returncode)

    async def node_addresses(self) -> Mapping[str, str]:
        if time.monotonic() - self._nodes_at > self.node_cache_seconds:
            try:
                res = await self.runner.run(slurm.build_node_addresses())
                if res.returncode == 0:
                    self._nodes = slurm.parse_node_addresses(res.stdout)
                    self._nodes_at = time.monotonic()
            except SchedulerUnavailable:
                pass  # keep the last known addresses
        return self._nodes

    async def node_address(self, node: str) -> str | None:
        addresses = await self.node_addresses()
        if node not in addresses:
            self._nodes_at = 0.0  # a node added since the last look
            addresses = await self.node_addresses()
        return addresses.get(node)

    async def partition_obstacle(self, partition: str, node: str | None = None) -> str | None:
        """"All nodes of partition debug are drained: maintenance" when no node of the partition
        can take a job now, else None. One sinfo per partition per `obstacle_cache_seconds`: it
        is asked only for queued jobs whose reason could mean this (see the spawner)."""
        key = f"{partition}/{node or ''}"
        cached = self._obstacles.get(key)
        if cached is not None and time.monotonic() - cached[0] < self.obstacle_cache_seconds:
            return cached[1]
        try:
            res = await self.runner.run(build_node_states_argv(partition, node), timeout=10)
        except SchedulerUnavailable:
            return None
        found = partition_obstacle(partition, res.stdout, node) if res.returncode == 0 else None
        self._obstacles[key] = (time.monotonic(), found)
        return found


def raise_unless_ok(res: CommandResult, what: str) -> None:
    """SchedulerUnavailable "WHAT failed: <the last line it printed>." for a failed command."""
    if res.returncode != 0:
        lines = [ln.strip() for ln in res.stderr.splitlines() if ln.strip()]
        raise SchedulerUnavailable(f"{what} failed: {lines[-1] if lines else 'no reason given'}.", res.stderr)


def read_text_or_empty(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return ""
