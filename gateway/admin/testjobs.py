"""`check-config --submit-test-job`: a tiny job per partition and node that checks, from inside a
real job, what the notebook server will need there: SLURM_CONF, the PATH, the interpreter with the
gateway, and the way back to the hub (the hub API in direct mode, the tunnel's sshd in reverse mode).

The job is a `JobRequest` submitted through the site's scheduler adapter as the test user, exactly
as the spawner submits (the adapter writes the header and exports cluster.environment,
job.environment and PATH before the body); the body runs the site's prologue, then the checks. A
`JobWatcher` follows the jobs, as it follows the hub's.
"""

from __future__ import annotations

import asyncio
import shlex
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from gateway.admin.report import Report, last_line
from gateway.hub.jobspec import job_setup
from gateway.policy.model import SitePolicy
from schedulers.durations import format_words
from schedulers.errors import SchedulerError
from schedulers.model import JobRequest
from schedulers.runners import Runner
from schedulers.watcher import JobWatcher

_TEST_WALLTIME = timedelta(minutes=2)


@dataclass
class _TestJob:
    partition: str
    node: str | None
    job_id: str
    output: str


@dataclass(frozen=True)
class TestJobSetup:
    """What the checks above found, that the test jobs need."""

    policy: SitePolicy
    scheduler: Any
    """The site's adapter (schedulers.backends.Scheduler), over a runner as the test user."""
    runner: Runner
    user: str
    home: str
    """The test user's home: the jobs' working directory and where their output goes."""
    nodes: Mapping[str, Sequence[str]]
    """The nodes of each partition the scheduler offers (empty: the scheduler picks)."""
    account: str | None = None
    poll_interval: float = 1.0


class ProbeJobs:
    """Submits the test jobs as the test user, waits for them, and reports each."""

    def __init__(self, setup: TestJobSetup, report: Report):
        self.setup = setup
        self.policy = setup.policy
        self.scheduler = setup.scheduler
        self.runner = setup.runner
        self.user = setup.user
        self.report = report

    def _reach_target(self) -> tuple[str, int, str] | None:
        conn = self.policy.connection
        if conn.mode in ("direct", "login-node") and conn.hub_api_url:
            parts = urlsplit(conn.hub_api_url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            return parts.hostname or "", port, "the hub API (connection.hub_api_url)"
        if conn.mode == "reverse" and conn.ssh_host:
            return conn.ssh_host, conn.ssh_port, "the tunnel's SSH server (connection.ssh_host)"
        return None

    def _test_script(self) -> str:
        """The body after the adapter's header and exports: the prologue, then the checks."""
        job = self.policy.job
        lines = [job.prologue, 'echo "hpcgate-check node=${SLURMD_NODENAME:-$(hostname)}"']
        if self.policy.cluster.scheduler == "slurm":
            lines.append('if [ -n "${SLURM_CONF:-}" ] && [ -r "$SLURM_CONF" ]; then '
                         'echo "hpcgate-check conf=ok"; else '
                         'echo "hpcgate-check conf=missing ${SLURM_CONF:-unset}"; fi')
            lines.append('command -v srun >/dev/null 2>&1 && echo "hpcgate-check path=ok" '
                         '|| echo "hpcgate-check path=missing"')
        py = shlex.quote(job.python)
        lines.append(f"if out=$({py} -c 'import gateway' 2>&1); then echo 'hpcgate-check python=ok'; "
                     'else echo "hpcgate-check python=failed $(echo "$out" | tail -n 1)"; fi')
        target = self._reach_target()
        if target:
            host, port, _ = target
            probe = shlex.quote(f"exec 3<>/dev/tcp/{host}/{port}")
            lines.append(f"if timeout 5 bash -c {probe} 2>/dev/null; then "
                         "echo 'hpcgate-check reach=ok'; else echo 'hpcgate-check reach=failed'; fi")
        lines.append('echo "hpcgate-check end"')
        return "\n".join(lines) + "\n"

    def _request(self, partition: str, node: str | None) -> JobRequest:
        token = uuid.uuid4().hex[:12]
        # The environment and working directory the spawner gives a server's job.
        job = job_setup(self.policy, self.user, self.setup.home, f"check-{token}")
        return JobRequest(script=self._test_script(), name=f"hpcgate-check-{token}",
                          partition=partition, node=node, account=self.setup.account,
                          walltime=_TEST_WALLTIME, workdir=job.workdir, environment=job.environment,
                          output=f"{job.workdir}/.hpcgate-check-{token}.out")

    def plan(self) -> list[tuple[str, str | None]]:
        """(partition, node) of each test job: the pinned node, else up to nodes_per_partition
        of the partition's nodes, else one job wherever the scheduler puts it."""
        out: list[tuple[str, str | None]] = []
        for name, partition in self.policy.partitions.items():
            if name not in self.setup.nodes:
                continue
            per_partition = self.policy.check.nodes_per_partition
            nodes: list[str | None] = ([partition.node] if partition.node else
                                       list(self.setup.nodes[name][:per_partition]) or [None])
            out += [(name, node) for node in nodes]
        return out

    @property
    def timeout(self) -> timedelta:
        """How long each test job may take from submission to its end."""
        return self.policy.check.job_timeout

    async def check(self) -> None:
        self.report.section("Test jobs")
        jobs: list[_TestJob] = []
        for name, node in self.plan():
            job = await self._submit(name, node)
            if job is not None:
                jobs.append(job)
        watcher = JobWatcher(self.scheduler, fast_interval=self.setup.poll_interval,
                             slow_interval=self.setup.poll_interval)
        try:
            results = await asyncio.gather(*(self._follow(watcher, job) for job in jobs))
        finally:
            await watcher.stop()
        for lines in results:  # in submission order, whatever order the jobs ended in
            for status, text in lines:
                self.report.add(status, text)

    async def _follow(self, watcher: JobWatcher, job: _TestJob) -> list[tuple[str, str]]:
        timeout = self.timeout
        watcher.track(job.job_id)
        try:
            await watcher.wait_for(job.job_id, lambda s: s.is_final, timeout.total_seconds())
        except asyncio.TimeoutError:
            last = watcher.latest(job.job_id)
            try:
                await self.scheduler.cancel([job.job_id], self.user)
            except SchedulerError as err:
                return [("fail", f"The test job {job.job_id} on {self._where(job)} did not finish "
                                 f"within {format_words(timeout)}, and cancelling it failed: "
                                 f"{err.message}")]
            await self._remove(job.output)
            state = last.state.value if last else "unknown"
            return [("fail", f"The test job {job.job_id} on {self._where(job)} did not finish within "
                             f"{format_words(timeout)} (last state: {state}); it was cancelled.")]
        return await self._read_result(job)

    def _where(self, job: _TestJob) -> str:
        return f"partition {job.partition}" + (f", node {job.node}" if job.node else "")

    async def _submit(self, partition: str, node: str | None) -> _TestJob | None:
        req = self._request(partition, node)
        where = f"partition {partition}" + (f", node {node}" if node else "")
        try:
            job_id = await self.scheduler.submit(req, self.user)
        except (SchedulerError, ValueError) as err:  # ValueError: a name the builder refuses
            self.report.fail(f"The scheduler refused a test job on {where} as {self.user}: "
                             f"{getattr(err, 'message', err)}")
            return None
        return _TestJob(partition, node, job_id, req.output or "")

    async def _remove(self, path: str) -> None:
        await self.runner.run(["rm", "-f", path], user=self.user)

    async def _read_result(self, job: _TestJob) -> list[tuple[str, str]]:
        """Report lines (status, sentence) for one finished test job."""
        res = await self.runner.run(["cat", job.output], user=self.user)
        rc, text = res.returncode, res.stdout
        await self._remove(job.output)
        where = self._where(job)
        if rc != 0 or "hpcgate-check end" not in text:
            tail = last_line(text) if text else "no output file"
            return [("fail", f"The test job {job.job_id} on {where} ended before its checks "
                             f"finished (a failing prologue?): {tail}.")]
        found = dict(line.split(" ", 1)[1].split("=", 1) for line in text.splitlines()
                     if line.startswith("hpcgate-check ") and "=" in line)
        ran_on = found.get("node", "?")
        lines: list[tuple[str, str]] = []
        if found.get("conf", "ok") != "ok":
            conf = found["conf"].split(" ", 1)[-1]
            lines.append(("fail", f"In a job on {ran_on} ({where}) SLURM_CONF is {conf} or "
                                  "unreadable: set it in cluster.environment."))
        if found.get("path", "ok") != "ok":
            lines.append(("fail", f"In a job on {ran_on} ({where}) the PATH from job.path finds no "
                                  "srun."))
        if found.get("python", "ok") != "ok":
            reason = found["python"].removeprefix("failed").strip()
            lines.append(("fail", f"In a job on {ran_on} ({where}) {self.policy.job.python} cannot "
                                  f"import the gateway: {reason}."))
        target = self._reach_target()
        if target and found.get("reach") != "ok":
            host, port, what = target
            advice = ("use connection mode reverse, or a hub address every node can reach"
                      if self.policy.connection.mode == "direct"
                      else "check the SSH server's listen address and firewalls")
            lines.append(("fail", f"A job on {ran_on} ({where}) cannot reach {what} at "
                                  f"{host}:{port}: {advice}."))
        if not lines:
            reach = f", reaches {target[0]}:{target[1]}" if target else ""
            conf = "SLURM_CONF, " if self.policy.cluster.scheduler == "slurm" else ""
            lines.append(("ok", f"Test job {job.job_id} ran on {ran_on} ({where}): {conf}PATH "
                                f"and the interpreter work{reach}."))
        return lines
