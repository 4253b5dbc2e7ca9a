"""slurmrestd's OpenAPI versions: request bodies, parsed answers, and the paths the client uses.

The fixtures in tests/fixtures/slurmrest/ were written by hand from SchedMD's OpenAPI documents
(see PROVENANCE.md there); nothing here needs a Slurm.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from schedulers import slurm
from schedulers.errors import SchedulerUnavailable, SubmitError
from schedulers.model import JobRequest, JobState, UnsafeValue
from schedulers.slurmrest import (
    SUPPORTED_API_VERSIONS,
    SlurmRestScheduler,
    build_rest_job,
    dialect,
    unsupported_version,
)
from schedulers.slurmrest.versions import build_job_desc, normalize_job, parse_nodes, parse_submit

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "slurmrest"
NEW = ("v0.0.40", "v0.0.41", "v0.0.42")
ENV = {"PATH": "/usr/bin:/bin", "HPCGATE_PORT": "8888"}
ADDRESSES = {"c1": "10.77.0.11", "c2": "10.77.0.12"}


def fixture(version: str, what: str) -> Any:
    return json.loads((FIXTURES / f"{version}_{what}.json").read_text())


def request(**kw: Any) -> JobRequest:
    fields = dict(script="exec jupyterhub-singleuser\n", partition="debug", account="physics",
                  cpus=2, memory_mb=2048, gpus=1, walltime=timedelta(minutes=90, seconds=1),
                  workdir="/home/bob", output="/home/bob/.hpcgate/job.log")
    return JobRequest(**{**fields, **kw})


# -- versions --------------------------------------------------------------------------------


def test_supported_versions_and_the_sentence_for_others() -> None:
    assert SUPPORTED_API_VERSIONS == ("v0.0.38", "v0.0.40", "v0.0.41", "v0.0.42")
    for version in SUPPORTED_API_VERSIONS:
        assert unsupported_version(version) is None
    assert unsupported_version("v0.0.39") == (
        "slurmrestd API version 'v0.0.39' is not supported; use one of v0.0.38, v0.0.40, v0.0.41, "
        "v0.0.42 (Slurm 22.05-25.11)")
    with pytest.raises(ValueError, match="'v0.0.43' is not supported"):
        dialect("v0.0.43")


def test_scheduler_refuses_an_unknown_version(tmp_path: Path) -> None:
    key = tmp_path / "jwt.key"
    key.write_bytes(b"k" * 32)
    with pytest.raises(ValueError, match="use one of v0.0.38"):
        SlurmRestScheduler("http://127.0.0.1:1", str(key), api_version="0.0.40")


# -- submit bodies -------------------------------------------------------------------------------


def test_v0038_body_keeps_the_2205_shape() -> None:
    body = dialect("v0.0.38").build_submit(request(), ENV)
    assert body == build_rest_job(request(), ENV)
    assert body["script"].startswith("#!/bin/bash\n")
    job = body["job"]
    assert job["environment"] == ENV  # an object in v0.0.38
    assert job["time_limit"] == 91  # plain minutes, rounded up
    assert job["memory_per_node"] == 2048
    assert job["nodes"] == [1, 1] and job["gres"] == "gpu:1"
    assert "script" not in job
    with pytest.raises(UnsafeValue, match="cannot pin"):
        build_rest_job(request(node="c1"), ENV)


@pytest.mark.parametrize("version", NEW)
def test_new_versions_body_follows_job_desc_msg(version: str) -> None:
    body = dialect(version).build_submit(request(), ENV)
    assert set(body) == {"job"}  # job_submit_req: the script travels inside the job
    job = body["job"]
    assert job["script"].startswith("#!/bin/bash\n") and "#SBATCH --partition=debug" in job["script"]
    assert job["environment"] == ["PATH=/usr/bin:/bin", "HPCGATE_PORT=8888"]
    assert job["time_limit"] == {"set": True, "infinite": False, "number": 91}
    assert job["memory_per_node"] == {"set": True, "infinite": False, "number": 2048}
    assert (job["minimum_nodes"], job["maximum_nodes"], job["tasks"], job["cpus_per_task"]) == (1, 1, 1, 2)
    assert job["tres_per_node"] == "gres/gpu:1"
    assert job["current_working_directory"] == "/home/bob"
    assert job["standard_output"] == job["standard_error"] == "/home/bob/.hpcgate/job.log"
    assert (job["partition"], job["account"], job["name"]) == ("debug", "physics", "hpcgate")
    assert "gres" not in job and "nodes" not in job


@pytest.mark.parametrize("version", NEW)
def test_new_versions_pin_a_node_and_leave_unset_fields_out(version: str) -> None:
    job = dialect(version).build_submit(
        JobRequest(script="true\n", node="c2"), {"PATH": "/bin"})["job"]
    assert job["required_nodes"] == ["c2"]
    for absent in ("time_limit", "memory_per_node", "tres_per_node", "partition", "account",
                   "current_working_directory", "standard_output"):
        assert absent not in job


@pytest.mark.parametrize("version", NEW)
def test_new_versions_validate_like_the_cli(version: str) -> None:
    with pytest.raises(UnsafeValue):
        dialect(version).build_submit(request(partition="debug\n#SBATCH --uid=0"), ENV)


# -- answers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", SUPPORTED_API_VERSIONS)
def test_submit_response_gives_the_job_id(version: str) -> None:
    assert parse_submit(fixture(version, "submit_response")) == "101"
    assert parse_submit({"errors": [{"description": "no"}]}) is None


@pytest.mark.parametrize("version", SUPPORTED_API_VERSIONS)
def test_jobs_parse_into_states_nodes_and_exit_codes(version: str) -> None:
    jobs = dialect(version).parse_jobs(fixture(version, "jobs"), ADDRESSES)
    pending, running = jobs["101"], jobs["102"]
    assert pending.state is JobState.PENDING and pending.reason == "Resources"
    assert pending.reason_text and not pending.reason_is_permanent
    assert pending.estimated_start is not None and pending.node is None
    assert running.state is JobState.RUNNING
    assert (running.node, running.node_address) == ("c1", "10.77.0.11")
    assert running.exit_code is None
    assert (jobs["103"].state, jobs["103"].exit_code) == (JobState.COMPLETED, 0)
    failed = jobs["104"]
    assert (failed.state, failed.exit_code, failed.signal) == (JobState.FAILED, 3, None)
    assert "exit code 3" in failed.reason_text and failed.node == "c2"
    assert (jobs["105"].state, jobs["105"].exit_code, jobs["105"].signal) == (JobState.TIMEOUT, 0, 15)
    assert (jobs["106"].state, jobs["106"].exit_code) == (JobState.CANCELLED, 0)
    assert running.raw["current_working_directory"] == "/home/bob"  # the record as Slurm sent it
    assert running.raw["standard_output"].endswith("job-102.log")


@pytest.mark.parametrize("version", NEW)
def test_errors_beside_a_job_list_are_not_an_empty_queue(version: str) -> None:
    doc = fixture(version, "jobs")
    doc["errors"] = [{"description": "Unable to contact slurm controller (connect failure)",
                      "error_number": 1007, "error": "Unable to contact slurm controller",
                      "source": "slurm_load_jobs()"}]
    doc["jobs"] = []
    with pytest.raises(SchedulerUnavailable):
        dialect(version).parse_jobs(doc, {})
    with pytest.raises(SchedulerUnavailable):
        dialect(version).parse_jobs({"meta": {}}, {})


def test_the_node_falls_back_to_job_resources() -> None:
    job = fixture("v0.0.41", "jobs")["jobs"][1]
    job["batch_host"] = job["nodes"] = ""
    assert normalize_job(job)["nodes"] == "c1"  # v0.0.41+: job_resources.nodes.list
    old = fixture("v0.0.40", "jobs")["jobs"][1]
    old["batch_host"] = old["nodes"] = ""
    assert normalize_job(old)["nodes"] == "c1"  # v0.0.40: job_resources.nodes is the list


@pytest.mark.parametrize("version", SUPPORTED_API_VERSIONS)
def test_node_listing_gives_addresses(version: str) -> None:
    assert parse_nodes(fixture(version, "nodes")) == ADDRESSES


# -- the client against a stand-in slurmrestd ------------------------------------------------------


class FakeSlurmrestd:
    """Serves the fixtures of one version at that version's paths and records every request."""

    def __init__(self, version: str):
        self.version = version
        self.seen: list[tuple[str, str, str, str, Any]] = []
        self.app = web.Application()
        prefix = f"/slurm/{version}"
        self.app.router.add_post(f"{prefix}/job/submit", self.submit)
        self.app.router.add_get(f"{prefix}/jobs", self.answer("jobs"))
        self.app.router.add_get(f"{prefix}/nodes", self.answer("nodes"))
        self.app.router.add_delete(prefix + "/job/{job_id}", self.cancel)

    def record(self, request: web.Request, body: Any = None) -> None:
        self.seen.append((request.method, request.path, request.headers.get("X-SLURM-USER-NAME", ""),
                          request.headers.get("X-SLURM-USER-TOKEN", ""), body))

    async def submit(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.record(request, body)
        if body["job"].get("partition") == "nope":
            return web.json_response({"errors": [{"description": "Invalid partition name specified",
                                                  "error_number": 2015}]}, status=500)
        return web.json_response(fixture(self.version, "submit_response"))

    def answer(self, what: str) -> Any:
        async def handler(request: web.Request) -> web.Response:
            self.record(request)
            return web.json_response(fixture(self.version, what))
        return handler

    async def cancel(self, request: web.Request) -> web.Response:
        self.record(request)
        return web.json_response({"errors": [], "warnings": []})


@contextlib.asynccontextmanager
async def served(version: str, tmp_path: Path) -> AsyncIterator[tuple[FakeSlurmrestd, SlurmRestScheduler]]:
    """A stand-in slurmrestd on 127.0.0.1 (random port) and a client for it, on the test's loop."""
    fake = FakeSlurmrestd(version)
    runner = web.AppRunner(fake.app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    key = tmp_path / "jwt_hs256.key"
    key.write_bytes(b"0123456789abcdef" * 2)
    rest = SlurmRestScheduler(f"http://127.0.0.1:{port}/", str(key), api_version=version,
                              command_timeout=5.0)
    try:
        yield fake, rest
    finally:
        await rest.close()
        await runner.cleanup()


def _claims(token: str) -> dict[str, Any]:
    part = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


@pytest.mark.parametrize("version", SUPPORTED_API_VERSIONS)
async def test_client_speaks_the_versions_paths_with_jwt(version: str, tmp_path: Path) -> None:
    async with served(version, tmp_path) as (fake, rest):
        await _talk(fake, rest)


async def _talk(fake: FakeSlurmrestd, rest: SlurmRestScheduler) -> None:
    version = fake.version
    assert rest.timeout.total == 5.0
    job_id = await rest.submit(request(gpus=0), "bob")
    assert job_id == "101"
    statuses = await rest.status(["101", "102", "999"])
    assert set(statuses) == {"101", "102"}
    assert statuses["102"].node_address == "10.77.0.11"
    assert await rest.node_addresses() == ADDRESSES
    assert await rest.node_address("c2") == "10.77.0.12"
    await rest.cancel(["102"], user="bob")
    calls = [(method, path, user) for method, path, user, _, _ in fake.seen]
    assert calls == [("POST", f"/slurm/{version}/job/submit", "bob"),
                     ("GET", f"/slurm/{version}/jobs", "root"),
                     ("GET", f"/slurm/{version}/nodes", "root"),  # cached afterwards
                     ("DELETE", f"/slurm/{version}/job/102", "bob")]
    for _, _, user, token, _ in fake.seen:
        assert _claims(token)["sun"] == user
    body = fake.seen[0][4]
    if version == "v0.0.38":
        assert "script" in body and isinstance(body["job"]["environment"], dict)
    else:
        assert "script" in body["job"] and isinstance(body["job"]["environment"], list)


@pytest.mark.parametrize("version", ["v0.0.38", "v0.0.42"])
async def test_client_explains_a_refused_submit(version: str, tmp_path: Path) -> None:
    async with served(version, tmp_path) as (_, rest):
        with pytest.raises(SubmitError) as err:
            await rest.submit(request(partition="nope"), "bob")
    assert "Invalid partition name specified" in err.value.raw


def test_a_server_job_is_never_requeued_by_any_transport() -> None:
    """A notebook server lives in its job's memory: a job Slurm requeued after a node failure
    came back as a pending job while the hub still showed the server running (found by
    benchmarks.chaos, node_lost). The job must end as NODE_FAIL instead."""
    req = request()
    assert "#SBATCH --no-requeue" in slurm.build_script(req).splitlines()
    assert build_rest_job(req, ENV)["job"]["requeue"] is False
    assert build_job_desc(req, ENV)["job"]["requeue"] is False
