"""The site policy through the real hub: each user's form, and refusals in words."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import pytest

from tests.helpers.hub import Hub, running_hub, server_dir
from tests.helpers.lab import new_in_unix_homes, unix_homes, workdir

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def policy_hub(lab: dict) -> Iterator[Hub]:
    with running_hub(lab, "policy", ("alice", "bob", "carol")) as h:
        yield h


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
    # job.workdir: the job works in the lab's home for alice, its state inside it.
    assert job["current_working_directory"] == str(workdir(policy_hub.lab, "alice"))
    assert (server_dir(policy_hub.lab, "alice") / "job.log").exists()
    policy_hub.stop("alice")


def test_a_server_run_leaves_nothing_in_the_unix_home(policy_hub: Hub) -> None:
    """Lab users' Unix homes are shared by every lab on the machine: a server started, used (a
    kernel: IPython's profile, Jupyter's runtime files) and stopped writes nothing there."""
    before = unix_homes(policy_hub.lab)
    status, body = policy_hub.spawn("bob", {"partition": "debug", "walltime": "10m"})
    assert status in (201, 202), body
    try:
        policy_hub.wait_ready("bob")
        status, body = policy_hub.api("POST", "/users/bob/tokens", {"note": "homes"})
        assert status == 201, body
        req = urllib.request.Request(f"{policy_hub.hub.url}/user/bob/api/kernels", data=b"{}",
                                     method="POST", headers={"Authorization": f"token {body['token']}",
                                                             "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            assert resp.status == 201
    finally:
        policy_hub.stop_quietly("bob")
    assert new_in_unix_homes(policy_hub.lab, before) == {}
    assert (workdir(policy_hub.lab, "bob") / ".hpcgate" / "servers" / "default").is_dir()
