"""`check-config --submit-test-job`: a tiny job per partition and node that checks, from inside a
real job, what the notebook server will need there: SLURM_CONF, the PATH, the interpreter with the
gateway, and the way back to the hub (the hub API in direct mode, the tunnel's sshd in reverse mode).

The job script is built like the spawner's: it exports cluster.environment, job.environment and
PATH, then runs the site's prologue. It is submitted with --export=NONE, so nothing leaks in from
the submitting shell and the test shows what the script alone provides.
"""

from __future__ import annotations

import shlex
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from gateway.admin.probe import last_line, unix_groups_of
from gateway.policy.rules import rules_for
from schedulers.durations import format_slurm, format_words

if TYPE_CHECKING:
    from gateway.admin.check import ConfigChecker

_TEST_WALLTIME = timedelta(minutes=2)
_FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED")


@dataclass
class _TestJob:
    partition: str
    node: str | None
    job_id: str
    output: str


class ProbeJobs:
    """Submits the test jobs as the checker's test user, waits for them, and reports each."""

    def __init__(self, checker: ConfigChecker):
        self.checker = checker
        self.policy = checker.policy
        self.report = checker.report
        self.run = checker.run
        self.user = checker.user
        self.home = checker.home
        self.as_user = checker.as_user

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
        job = self.policy.job
        lines = ["#!/bin/bash"]
        lines += [f"export {k}={shlex.quote(v)}" for k, v in self.checker.job_env.items()]
        lines += [job.prologue, 'echo "hpcgate-check node=${SLURMD_NODENAME:-$(hostname)}"']
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

    def check(self) -> None:
        self.report.section("Test jobs")
        if self.policy.cluster.scheduler != "slurm":
            self.report.skip("Test jobs are implemented for Slurm only.")
            return
        if not self.checker.slurm_ok or self.checker.live is None:
            self.report.skip("Slurm did not answer above; no test jobs submitted.")
            return
        rules = rules_for(self.policy, [g.gr_name for g in unix_groups_of(self.user or "")])
        script = self._test_script()
        jobs: list[_TestJob] = []
        for name, partition in self.policy.partitions.items():
            if name not in self.checker.live:
                continue
            nodes: list[str | None] = ([partition.node] if partition.node else
                                       list(self.checker.live[name].nodes[:self.policy.check.nodes_per_partition])
                                       or [None])
            for node in nodes:
                jobs.extend(self._submit(name, node, script, rules.default_account))
        deadline = time.monotonic() + self.policy.check.job_timeout.total_seconds()
        pending = {j.job_id: j for j in jobs}
        done: dict[str, list[tuple[str, str]]] = {}
        last_state: dict[str, str] = {}
        while pending and time.monotonic() < deadline:
            rc, out, err = self.as_user(["squeue", "-h", "-j", ",".join(pending), "-o", "%i %T %r"])
            if rc != 0 and "Invalid job id" in err:
                rc, out = 0, ""  # every job left the controller's memory: all are finished
            active = {}
            for line in out.splitlines() if rc == 0 else []:
                parts = line.split(None, 2)
                if len(parts) >= 2:
                    active[parts[0]] = " ".join(parts[1:])
            last_state.update(active)
            ended = [j for j in pending if rc == 0 and (j not in active or active[j].startswith(_FINAL))]
            for job_id in ended:
                done[job_id] = self._read_result(pending.pop(job_id))
            if pending:
                time.sleep(self.checker.poll_interval)
        for job in pending.values():
            self.as_user(["scancel", job.job_id])
            state = last_state.get(job.job_id, "unknown")
            done[job.job_id] = [("fail", f"The test job {job.job_id} on {self._where(job)} did not "
                                         f"finish within {format_words(self.policy.check.job_timeout)}"
                                         f" (last state: {state}); it was cancelled.")]
            self._remove(job.output)
        for job in jobs:  # report in submission order, whatever order the jobs ended in
            for status, text in done.get(job.job_id, []):
                self.report.add(status, text)

    def _where(self, job: _TestJob) -> str:
        return f"partition {job.partition}" + (f", node {job.node}" if job.node else "")

    def _submit(self, partition: str, node: str | None, script: str, account: str | None
                ) -> list[_TestJob]:
        output = f"{self.home}/.hpcgate-check-{uuid.uuid4().hex[:12]}.out"
        argv = ["sbatch", "--parsable", "--export=NONE", "-J", "hpcgate-check", "-p", partition,
                "-N", "1", "-n", "1", "-t", format_slurm(_TEST_WALLTIME), "-o", output,
                "-D", self.home]
        if node:
            argv += ["-w", node]
        if account:
            argv += ["-A", account]
        rc, out, err = self.as_user(argv, input=script)
        where = f"partition {partition}" + (f", node {node}" if node else "")
        if rc != 0:
            self.report.fail(f"Slurm refused a test job on {where} as {self.user}: {last_line(err)}.")
            return []
        return [_TestJob(partition, node, out.strip().split(";")[0], output)]

    def _remove(self, path: str) -> None:
        self.run(["rm", "-f", path], self.user)

    def _read_result(self, job: _TestJob) -> list[tuple[str, str]]:
        """Report lines (status, sentence) for one finished test job."""
        rc, text, _ = self.run(["cat", job.output], self.user)
        self._remove(job.output)
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
            lines.append(("ok", f"Test job {job.job_id} ran on {ran_on} ({where}): SLURM_CONF, PATH "
                                f"and the interpreter work{reach}."))
        return lines
