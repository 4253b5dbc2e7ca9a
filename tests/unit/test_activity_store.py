"""The hub's activity store and the checks of its API: idempotent by id, retention, only a
server's own records, only records that follow the schema."""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import pytest

from gateway.hub.activity_store import ActivityStore, retention_cutoff
from gateway.hub.api import check_records, server_of_token, token_digest
from gateway.job.activity.records import Origin, iso, keep_code, problems

DAY = 86400.0
NOW = 1_900_000_000.0


def event(user: str = "alice", server: str = "", at: float = NOW) -> dict:
    return Origin(user=user, server=server, job_id="42", node="c1").record(
        "server_start", time=iso(at), reason=None)


@pytest.fixture
def store(tmp_path: Path) -> ActivityStore:
    return ActivityStore(db_path=str(tmp_path / "activity.sqlite"))


async def test_the_same_record_twice_is_stored_once(store: ActivityStore, tmp_path: Path) -> None:
    a, b = event(), event()
    assert await store.insert([a, b], timedelta(days=180), NOW) == [a["id"], b["id"]]
    assert await store.insert([a], timedelta(days=180), NOW) == [a["id"]]
    assert [r["id"] for r in await store.records("alice")] == sorted([a["id"], b["id"]])
    assert (tmp_path / "activity.sqlite").stat().st_mode & 0o777 == 0o600
    await store.close()


async def test_retention_deletes_old_records_and_refuses_them(store: ActivityStore) -> None:
    old, recent = event(at=NOW - 40 * DAY), event(at=NOW - 10 * DAY)
    await store.insert([old, recent], timedelta(days=180), NOW)
    assert len(await store.records("alice")) == 2
    assert await store.purge(timedelta(days=30), NOW) == 1
    assert [r["id"] for r in await store.records("alice")] == [recent["id"]]
    await store.insert([event(at=NOW - 31 * DAY)], timedelta(days=30), NOW)  # too old on arrival
    assert len(await store.records("alice")) == 1
    assert retention_cutoff(timedelta(days=30), NOW) == NOW - 30 * DAY
    await store.close()


async def test_a_clock_in_the_future_does_not_outlive_retention(store: ActivityStore) -> None:
    await store.insert([event(at=NOW + 365 * DAY)], timedelta(days=180), NOW)
    assert await store.purge(timedelta(days=1), NOW + 2 * DAY) == 1
    await store.close()


def test_only_the_servers_own_schema_valid_records_are_taken() -> None:
    mine, bobs, other_server = event(), event(user="bob"), event(server="gpu")
    broken = dict(event(), kind="execution")  # execution fields missing
    body = json.dumps({"records": [mine, bobs, other_server, broken, "nonsense"]}).encode()
    good, refused = check_records(body, "alice", "")
    assert good == [mine]
    reasons = {r["id"]: r["reason"] for r in refused}
    assert reasons[bobs["id"]] == reasons[other_server["id"]] == "the record belongs to another server"
    assert "required" in reasons[broken["id"]]
    assert len(refused) == 4


def test_code_is_kept_as_the_policy_says() -> None:
    code = "import os\nprint(os.getpid())\n"
    assert keep_code("none", code) == {"kept": "none"}
    hashed = keep_code("hash", code)
    assert hashed["lines"] == 2 and len(hashed["sha256"]) == 64 and "text" not in hashed
    assert keep_code("full", code)["text"] == code
    with pytest.raises(ValueError):
        keep_code("some", code)


def test_the_schema_file_is_in_the_package_and_strict() -> None:
    rec = event()
    assert problems(rec) == []
    assert problems({**rec, "extra": 1})
    assert problems({**rec, "time": "yesterday"})
    assert problems({**rec, "id": "../etc"})
    assert os.path.exists(Path(__file__).resolve().parents[2] / "gateway/job/activity_schema.json")


def test_only_a_servers_own_token_names_a_server() -> None:
    class Spawner:
        def __init__(self, name: str, token: str):
            self.name, self.token_digest = name, token_digest(token) if token else ""

    spawners = {"": Spawner("", "tok-default"), "gpu": Spawner("gpu", "tok-gpu"),
                "stopped": Spawner("stopped", "")}
    assert server_of_token(spawners, "tok-gpu").name == "gpu"
    assert server_of_token(spawners, "tok-default").name == ""
    assert server_of_token(spawners, "a-user-api-token") is None
    assert server_of_token(spawners, "") is None
