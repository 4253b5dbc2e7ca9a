"""Slurm through slurmrestd: HTTP in the hub's process instead of forking a command per call.

Authentication is Slurm's JWT: the hub holds the cluster's HS256 key (AuthAltParameters=jwt_key)
and signs short-lived tokens for the user it acts as (claim `sun`). Tokens travel in headers only.
GET /jobs returns the same document as `squeue --json`, in one controller RPC.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiohttp

from schedulers import slurm
from schedulers.backends import read_text_or_empty
from schedulers.errors import CancelError, SchedulerUnavailable, SubmitError
from schedulers.model import JobRequest, JobStatus, UnsafeValue

API = "slurm/v0.0.38"


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


def build_rest_job(req: JobRequest, environment: dict[str, str]) -> dict[str, Any]:
    """The JSON body of POST /job/submit for a request (v0.0.38 job properties)."""
    if req.node:
        raise UnsafeValue("slurmrestd v0.0.38 cannot pin a job to a node; use the CLI transport")
    script = slurm.build_script(req)  # also validates every field
    job: dict[str, Any] = {
        "name": req.name,
        "cpus_per_task": req.cpus,
        "tasks": 1,
        "nodes": [1, 1],
        "environment": environment,
    }
    if req.partition:
        job["partition"] = req.partition
    if req.account:
        job["account"] = req.account
    if req.memory_mb is not None:
        job["memory_per_node"] = req.memory_mb
    if req.gpus:
        job["gres"] = f"gpu:{req.gpus}"
    if req.walltime is not None:
        job["time_limit"] = max(1, -(-int(req.walltime.total_seconds()) // 60))  # minutes, up
    if req.workdir:
        job["current_working_directory"] = req.workdir
    if req.output:
        job["standard_output"] = job["standard_error"] = req.output
    return {"script": script, "job": job}


def _errors(doc: Any) -> str:
    errors = doc.get("errors") if isinstance(doc, dict) else None
    return "; ".join(str(e.get("description") or e.get("error")) for e in errors or [] if e)


class SlurmRestScheduler:
    """The Scheduler protocol over slurmrestd (see schedulers.backends.SlurmScheduler)."""

    name = "slurm-rest"

    def __init__(self, url: str, jwt_key_file: str, query_user: str = "root",
                 environment: dict[str, str] | None = None, jobcomp_file: str | None = None,
                 timeout: float = 30):
        self.url = url.rstrip("/")
        self._key = Path(jwt_key_file).read_bytes()
        self.query_user = query_user
        self.environment = {"PATH": "/usr/local/bin:/usr/bin:/bin", **(environment or {})}
        self.jobcomp_file = jobcomp_file
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._tokens: dict[str, tuple[str, float]] = {}
        self._nodes: dict[str, str] | None = None

    def _token(self, user: str) -> str:
        token, expires = self._tokens.get(user, ("", 0.0))
        if time.time() > expires - 60:
            token = make_jwt(self._key, user, lifespan=600)
            self._tokens[user] = (token, time.time() + 600)
        return token

    async def _request(self, method: str, path: str, user: str, body: Any = None) -> tuple[int, Any]:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        headers = {"X-SLURM-USER-NAME": user, "X-SLURM-USER-TOKEN": self._token(user)}
        try:
            async with self._session.request(method, f"{self.url}/{path}", json=body,
                                             headers=headers) as resp:
                text = await resp.text()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            raise SchedulerUnavailable("slurmrestd is not answering.", str(err)) from err
        try:
            return status, json.loads(text) if text else {}
        except ValueError as err:
            raise SchedulerUnavailable("slurmrestd's answer could not be read.", text[:500]) from err

    async def submit(self, req: JobRequest, user: str) -> str:
        status, doc = await self._request("POST", f"{API}/job/submit", user,
                                          build_rest_job(req, self.environment))
        job_id = doc.get("job_id") if isinstance(doc, dict) else None
        if status == 200 and job_id:
            return str(job_id)
        raw = _errors(doc) or f"HTTP {status}"
        if status in (502, 503, 504) or "Unable to contact slurm controller" in raw:
            raise SchedulerUnavailable("The scheduler is not answering; try again in a minute.", raw)
        raise SubmitError(slurm.explain_submit_error(raw, req), raw)

    async def status(self, job_ids: Iterable[str]) -> dict[str, JobStatus]:
        wanted = set(job_ids)
        status, doc = await self._request("GET", f"{API}/jobs", self.query_user)
        if status != 200:
            raise SchedulerUnavailable("slurmrestd could not list jobs.", _errors(doc) or str(status))
        nodes = await self._node_addresses()
        parsed = slurm.parse_status(json.dumps(doc), node_addresses=nodes)
        return {k: v for k, v in parsed.items() if k in wanted}

    async def final_status(self, job_ids: Iterable[str]) -> dict[str, JobStatus]:
        if not self.jobcomp_file:
            return {}
        text = await asyncio.to_thread(read_text_or_empty, self.jobcomp_file)
        return slurm.parse_jobcomp(text, list(job_ids))

    async def cancel(self, job_ids: Iterable[str], user: str | None = None) -> None:
        for job_id in job_ids:
            slurm.build_cancel([job_id])  # validates the id
            status, doc = await self._request("DELETE", f"{API}/job/{job_id}",
                                              user or self.query_user)
            raw = _errors(doc)
            if status == 200 or "Invalid job id" in raw or "already finished" in raw:
                continue
            raise CancelError(f"Slurm could not cancel job {job_id}: {raw or status}", raw)

    async def _node_addresses(self) -> dict[str, str]:
        if self._nodes is None:
            status, doc = await self._request("GET", f"{API}/nodes", self.query_user)
            if status != 200:
                return {}
            self._nodes = {n["name"]: n.get("address") or n["name"] for n in doc.get("nodes") or []}
        return self._nodes

    async def node_address(self, node: str) -> str | None:
        return (await self._node_addresses()).get(node)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
