"""The slurmrestd watcher query: GET /jobs?update_time=T, GET /job/ID and GET /diag, as pure
builders and parsers against tests/fixtures/slurmrest (PROVENANCE.md there says which files were
captured from the lab's slurmrestd 22.05.8 and which were written from SchedMD's sources). The
client's behaviour against the real v0.0.38 is in tests/integration/test_watcher_cost.py; the
newer versions, which no lab here can run, are exercised against a stand-in at the end.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from schedulers.errors import SchedulerUnavailable
from schedulers.model import JobState
from schedulers.slurmrest import SUPPORTED_API_VERSIONS, SlurmRestScheduler, dialect
from schedulers.slurmrest.versions import (
    build_jobs_query,
    parse_controller_time,
    parse_job_answer,
    parse_jobs_answer,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "slurmrest"
NEW = ("v0.0.40", "v0.0.41", "v0.0.42")
ADDRESSES = {"c1": "10.77.0.11", "c2": "10.77.0.12"}


def fixture(version: str, what: str) -> Any:
    return json.loads((FIXTURES / f"{version}_{what}.json").read_text())


def test_the_query_names_update_time_only_when_there_is_one() -> None:
    assert build_jobs_query(None) == "jobs"
    assert build_jobs_query(1796604721) == "jobs?update_time=1796604721"
    for bad in (0, -5, True, 17.5, "1796604721"):
        with pytest.raises(ValueError):
            build_jobs_query(bad)  # type: ignore[arg-type]


def test_v0038_says_nothing_changed_with_http_304() -> None:
    # What the lab's slurmrestd 22.05.8 sends: status 304 and no body (the client reads {}).
    answer = parse_jobs_answer(304, {}, {"101"}, ADDRESSES, dialect("v0.0.38"))
    assert not answer.changed and answer.jobs == {}


@pytest.mark.parametrize("version", NEW)
def test_new_versions_say_nothing_changed_with_a_warning(version: str) -> None:
    doc = fixture(version, "jobs_unchanged")
    answer = parse_jobs_answer(200, doc, {"101"}, ADDRESSES, dialect(version))
    assert not answer.changed
    del doc["jobs"]  # the list may be left out altogether
    assert not parse_jobs_answer(200, doc, {"101"}, ADDRESSES, dialect(version)).changed


@pytest.mark.parametrize("version", NEW)
def test_an_empty_queue_is_not_mistaken_for_no_change(version: str) -> None:
    doc = fixture(version, "jobs_unchanged")
    doc["warnings"] = []
    answer = parse_jobs_answer(200, doc, {"101"}, ADDRESSES, dialect(version))
    assert answer.changed and answer.jobs == {}  # 101 is not held: the watcher looks it up


@pytest.mark.parametrize("version", SUPPORTED_API_VERSIONS)
def test_a_listing_keeps_only_the_wanted_jobs(version: str) -> None:
    answer = parse_jobs_answer(200, fixture(version, "jobs"), {"101", "104", "999"}, ADDRESSES,
                               dialect(version))
    assert answer.changed and set(answer.jobs) == {"101", "104"}
    assert answer.jobs["101"].state is JobState.PENDING and answer.jobs["101"].reason == "Resources"
    failed = answer.jobs["104"]
    assert (failed.state, failed.exit_code, failed.node) == (JobState.FAILED, 3, "c2")
    assert failed.node_address == "10.77.0.12"
    # v0.0.40+ say when slurmctld packed the list; v0.0.38 does not (GET /diag tells instead).
    assert answer.packed_at == (None if version == "v0.0.38" else 1767261800)


@pytest.mark.parametrize("version", SUPPORTED_API_VERSIONS)
def test_a_failed_listing_is_never_an_answer(version: str) -> None:
    broken = {"jobs": [], "errors": [{"description": "Unable to contact slurm controller",
                                      "error_number": 1007}],
              "warnings": [{"description": "No job changes since update_time=1"}]}
    for status, doc in ((200, broken), (500, broken), (502, {}), (200, {"meta": {}})):
        with pytest.raises(SchedulerUnavailable):
            parse_jobs_answer(status, doc, {"101"}, ADDRESSES, dialect(version))


def test_one_job_read_v0038_captured() -> None:
    held = parse_job_answer(200, fixture("v0.0.38", "job_held"), "1", ADDRESSES, dialect("v0.0.38"))
    assert held is not None and held.job_id == "1"
    assert held.state is JobState.HELD and held.reason == "JobHeldUser"
    assert parse_job_answer(200, fixture("v0.0.38", "job_held"), "2", ADDRESSES,
                            dialect("v0.0.38")) is None  # not the job asked for
    # An id slurmctld no longer holds (MinJobAge passed): HTTP 500 with error 2017, an answer.
    assert parse_job_answer(500, fixture("v0.0.38", "job_invalid"), "99999", ADDRESSES,
                            dialect("v0.0.38")) is None


@pytest.mark.parametrize("version", NEW)
def test_one_job_read_new_versions(version: str) -> None:
    doc = fixture(version, "jobs")
    doc["jobs"] = [j for j in doc["jobs"] if j["job_id"] == 102]
    running = parse_job_answer(200, doc, "102", ADDRESSES, dialect(version))
    assert running is not None and running.state is JobState.RUNNING
    assert running.node_address == "10.77.0.11"
    assert parse_job_answer(500, fixture(version, "job_invalid"), "99999", ADDRESSES,
                            dialect(version)) is None


@pytest.mark.parametrize("version", SUPPORTED_API_VERSIONS)
def test_one_job_read_that_fails_is_not_gone(version: str) -> None:
    down = {"jobs": [], "errors": [{"description": "Unable to contact slurm controller",
                                    "error_number": 1007, "error": "Unable to contact slurm controller"}]}
    with pytest.raises(SchedulerUnavailable):
        parse_job_answer(500, down, "102", ADDRESSES, dialect(version))


def test_controller_time_from_diag_v0038_captured() -> None:
    doc = fixture("v0.0.38", "diag")
    assert parse_controller_time(doc) == doc["statistics"]["req_time"] > 1_700_000_000
    assert parse_controller_time({"statistics": {"req_time": {"set": True, "number": 5}}}) == 5
    assert parse_controller_time({}) is None
    assert parse_controller_time({"statistics": {"req_time": 0}}) is None


# -- the client's cache on a version the lab cannot run ---------------------------------------------


class ChangingSlurmrestd:
    """Serves v0.0.42's fixtures: a listing, then "nothing changed" while `changed` is False."""

    version = "v0.0.42"

    def __init__(self) -> None:
        self.changed = True
        self.others: list[dict[str, Any]] = []  # other users' jobs in each full listing
        self.paths: list[str] = []
        self.app = web.Application()
        prefix = f"/slurm/{self.version}"
        self.app.router.add_get(f"{prefix}/jobs", self.jobs)
        self.app.router.add_get(prefix + "/job/{job_id}", self.job)
        self.app.router.add_get(f"{prefix}/nodes", self.nodes)

    async def jobs(self, request: web.Request) -> web.Response:
        self.paths.append(request.path_qs)
        if "update_time" in request.query and not self.changed:
            return web.json_response(fixture(self.version, "jobs_unchanged"))
        doc = fixture(self.version, "jobs")
        return web.json_response({**doc, "jobs": doc["jobs"] + self.others})

    async def job(self, request: web.Request) -> web.Response:
        self.paths.append(request.path_qs)
        doc = fixture(self.version, "jobs")
        doc["jobs"] = [j for j in doc["jobs"] if str(j["job_id"]) == request.match_info["job_id"]]
        if not doc["jobs"]:
            return web.json_response(fixture(self.version, "job_invalid"), status=500)
        return web.json_response(doc)

    async def nodes(self, request: web.Request) -> web.Response:
        return web.json_response(fixture(self.version, "nodes"))


@contextlib.asynccontextmanager
async def serving(tmp_path: Path) -> AsyncIterator[tuple[ChangingSlurmrestd, SlurmRestScheduler]]:
    fake = ChangingSlurmrestd()
    runner = web.AppRunner(fake.app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    key = tmp_path / "jwt_hs256.key"
    key.write_bytes(b"0123456789abcdef" * 2)
    rest = SlurmRestScheduler(f"http://127.0.0.1:{runner.addresses[0][1]}", str(key),
                              api_version=fake.version, command_timeout=5.0)
    try:
        await rest.node_addresses()
        yield fake, rest
    finally:
        await rest.close()
        await runner.cleanup()


async def test_new_versions_serve_our_jobs_from_the_cache_while_nothing_changes(tmp_path: Path) -> None:
    async with serving(tmp_path) as (fake, rest):
        first = await rest.status(["102", "104"])
        assert set(first) == {"102", "104"}
        fake.changed = False
        again = await rest.status(["102", "104"])
        assert again == first
        # A tracked id no listing answered for is read by itself; one slurmctld lacks is gone.
        assert set(await rest.status(["102", "104", "103"])) == {"102", "104", "103"}
        assert set(await rest.status(["102", "777"])) == {"102"}
    assert fake.paths == [
        "/slurm/v0.0.42/jobs",  # a hub that just started reads every job once
        # then from the listing's own last_update (1767261800) less the overlap, never /diag
        "/slurm/v0.0.42/jobs?update_time=1767261799",
        "/slurm/v0.0.42/jobs?update_time=1767261799", "/slurm/v0.0.42/job/103",
        "/slurm/v0.0.42/jobs?update_time=1767261799", "/slurm/v0.0.42/job/777",
    ]


async def test_queued_jobs_are_read_again_since_their_start_estimate_moves_silently(
        tmp_path: Path) -> None:
    async with serving(tmp_path) as (fake, rest):
        rest.refresh_waiting_seconds = 0.0  # due at once (the default is 30 s)
        await rest.status(["101", "102"])
        fake.changed = False
        fake.paths.clear()
        statuses = await rest.status(["101", "102"])
    assert statuses["101"].state is JobState.PENDING
    # The running job waits for refresh_seconds (600 s); the queued one is read by itself.
    assert fake.paths == ["/slurm/v0.0.42/jobs?update_time=1767261799", "/slurm/v0.0.42/job/101"]


async def test_a_busy_clusters_listing_is_read_off_the_hubs_loop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """5,000 other jobs (a listing of several MB): decoded and filtered in a thread, while the
    hub's loop keeps its rhythm; our jobs come out as from a short listing."""
    import threading

    from schedulers.slurmrest import client

    threads: list[str] = []
    real_parse = client.parse_jobs_answer

    def parse(*args: Any) -> Any:
        threads.append(threading.current_thread().name)
        return real_parse(*args)

    monkeypatch.setattr(client, "parse_jobs_answer", parse)
    async with serving(tmp_path) as (fake, rest):
        short = await rest.status(["102", "104"])
        first = fixture(fake.version, "jobs")["jobs"][0]
        fake.others = [{**first, "job_id": 500000 + i, "name": f"other-{i}"} for i in range(5000)]
        rest._known.clear()
        rest._since = None
        busy = await rest.status(["102", "104"])
    assert busy == short
    assert threads[0] == threading.main_thread().name and threads[-1] != threads[0]
