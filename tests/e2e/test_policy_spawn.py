"""The site policy through the real hub: each user's form, and refusals in words."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest

from gateway.lab.hub import LabHub
from tests.e2e.test_spawn import Hub


@pytest.fixture(scope="module")
def policy_hub(lab: dict):
    state = Path("/var/tmp") / f"hpcgate-hub-policy-{uuid.uuid4().hex[:8]}"
    labhub = LabHub(lab, state)
    h = Hub(lab, labhub)
    try:
        labhub.start()
        for user in ("alice", "bob", "carol"):
            h.api("POST", f"/users/{user}")
        yield h
    finally:
        labhub.stop()
        shutil.rmtree(state, ignore_errors=True)


def test_over_limit_and_hostile_values_are_refused_in_words(policy_hub: Hub) -> None:
    status, body = policy_hub.spawn("alice", {"partition": "long", "walltime": "1d"})
    assert status == 400
    assert "Partition 'long' allows at most 12 hours" in body["message"]
    assert "1 day" in body["message"]
    status, body = policy_hub.spawn("bob", {"partition": "debug", "cpus": "4; rm -rf /"})
    assert status == 400 and "Cores" in body["message"]
    status, body = policy_hub.spawn("bob", {"partition": "gpu"})
    assert status == 400 and "gpu" in body["message"]
    assert not policy_hub.active_jobs("alice") and not policy_hub.active_jobs("bob")


def test_policy_spawn_runs_with_the_policy_environment(policy_hub: Hub) -> None:
    status, body = policy_hub.spawn("alice", {"partition": "debug", "walltime": "10m", "cpus": "2"})
    assert status in (201, 202), body
    policy_hub.wait_ready("alice")
    assert policy_hub.get("/user/alice/api")[0] == 200
    [job] = policy_hub.active_jobs("alice")
    assert job["cpus"] == 2 and job["time_limit"] == 10 and job["partition"] == "debug"
    policy_hub.stop("alice")
