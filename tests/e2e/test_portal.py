"""The portal as a researcher meets it: directory login, their own form, their own server only.

The same hub `hpcgate demo` runs (LDAP login against the lab's slapd, the lab's site policy),
driven through its HTML pages with cookies and _xsrf like a browser.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from tests.helpers.hub import Hub, running_hub
from tests.helpers.lab import passwords as lab_passwords
from tests.helpers.portal import Portal

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def portal_hub(lab: dict) -> Iterator[Hub]:
    with running_hub(lab, "portal", ldap_login=True) as h:
        yield h


@pytest.fixture(scope="module")
def passwords(lab: dict) -> dict[str, str]:
    return lab_passwords(lab)


def logged_in(hub: Hub, user: str, password: str) -> Portal:
    portal = Portal(hub.hub.url)
    status, url, body = portal.login(user, password)
    assert status == 200 and "/hub/login" not in url, portal.login_error(body)
    return portal


def test_wrong_password_and_unknown_user_get_one_plain_sentence(portal_hub: Hub,
                                                               passwords: dict) -> None:
    for user, password in (("alice", passwords["bob"]), ("nobody-here", "x"),
                           ("*", "*"), ("alice)(uid=*", passwords["alice"])):
        status, _, body = Portal(portal_hub.hub.url).login(user, password)
        assert status == 403, (user, status)
        assert Portal.login_error(body) == "Wrong username or password."


def test_each_user_sees_the_form_their_groups_allow(portal_hub: Hub, passwords: dict) -> None:
    alice = logged_in(portal_hub, "alice", passwords["alice"]).form_partitions()
    carol = logged_in(portal_hub, "carol", passwords["carol"]).form_partitions()
    # soundscape-lab caps `long` at 12 hours and 8 cores; hub-admins get the partition's own limits.
    assert set(alice) == set(carol) == {"debug", "long"}
    assert "up to 12 hours, 8 cores" in alice["long"], alice
    assert "up to 2 days, 16 cores" in carol["long"], carol
    assert alice["long"] != carol["long"]


def test_alice_spawns_from_the_form_and_carol_cannot_reach_her_server(portal_hub: Hub,
                                                                     passwords: dict) -> None:
    alice = logged_in(portal_hub, "alice", passwords["alice"])
    status, url, body = alice.request("/hub/spawn", {"partition": "debug", "cpus": "1",
                                                     "memory": "1G", "walltime": "10m"})
    assert status == 200, body[-500:]
    try:
        assert alice.wait_for_lab("alice") == "/user/alice/lab"
        [job] = portal_hub.active_jobs("alice")
        assert job["user_name"] == "alice" and job["time_limit"] == 10
        carol = logged_in(portal_hub, "carol", passwords["carol"])
        status, url, _ = carol.request("/user/alice/api/contents")
        # The single-user server's OAuth refuses carol: she never gets alice's files.
        assert status == 403, (status, url)
    finally:
        portal_hub.stop("alice")
    assert not portal_hub.active_jobs("alice")


def test_operators_run_the_portal_but_never_open_a_users_server(portal_hub: Hub,
                                                                passwords: dict) -> None:
    logged_in(portal_hub, "carol", passwords["carol"])  # her groups reach the hub at login
    status, body = portal_hub.api("POST", "/users/carol/tokens", {"note": "test"})
    assert status == 201, body
    carol_token = body["token"]
    status, body = portal_hub.spawn("alice", {"partition": "debug", "walltime": "10m"})
    assert status in (201, 202), body
    try:
        portal_hub.wait_ready("alice")
        as_carol = urllib.request.Request(f"{portal_hub.hub.url}/hub/api/users/alice",
                                          headers={"Authorization": f"token {carol_token}"})
        with urllib.request.urlopen(as_carol, timeout=10) as resp:
            assert json.loads(resp.read())["servers"][""]["ready"]  # she sees and manages it
        for path in ("/user/alice/api/contents", "/user/alice/files/"):
            request = urllib.request.Request(f"{portal_hub.hub.url}{path}",
                                             headers={"Authorization": f"token {carol_token}"})
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=10)
            assert refused.value.code == 403, path
    finally:
        portal_hub.stop("alice")
