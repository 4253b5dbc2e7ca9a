"""Replicas, a directory that never answers, StartTLS refused, nested groups and memberOf.

The lab's own slapd is never stopped or changed here (other tests share it): failover runs on two
private copies of the lab's directory (gateway.lab.replica), and the nested-group and memberOf entries
are added through the admin account to a private copy that loads the memberof overlay.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ldap3
import pytest
from tornado import web

from auth.authenticator import NOT_ALLOWED, UNAVAILABLE, WRONG_CREDENTIALS
from auth.directory import DirectoryUnavailable
from gateway.lab.replica import DirectoryCopy, StalledListener, start_directory_copy
from tests.helpers.ldap import client, login, make, passwords, refused

pytestmark = pytest.mark.lab


@pytest.fixture
def two_copies(lab: dict[str, Any], tmp_path: Path) -> Iterator[tuple[DirectoryCopy, DirectoryCopy]]:
    first = start_directory_copy(lab, tmp_path / "first")
    try:
        second = start_directory_copy(lab, tmp_path / "second")
        try:
            yield first, second
        finally:
            second.stop()
    finally:
        first.stop()


async def test_replica_takes_over_when_the_first_server_stops(
        lab: dict[str, Any], two_copies: tuple[DirectoryCopy, DirectoryCopy]) -> None:
    first, second = two_copies
    auth = make(lab, server_urls=[first.uri, second.uri])
    pw = passwords(lab)
    assert (await login(auth, "alice", pw["alice"]))["name"] == "alice"  # pooled connections to `first`
    first.stop()
    assert not first.running()
    t0 = time.monotonic()
    model = await login(auth, "bob", pw["bob"])
    took = time.monotonic() - t0
    assert model["auth_state"]["uidNumber"] == 5002
    assert took < 2.0, f"failover took {took:.2f} s"
    # the failed server is now tried last: the next login goes straight to the replica
    t0 = time.monotonic()
    await login(auth, "alice", pw["alice"])
    assert time.monotonic() - t0 < 0.5


async def test_a_stalled_first_server_costs_one_receive_timeout(lab: dict[str, Any]) -> None:
    with StalledListener() as stalled:
        auth = make(lab, server_urls=[stalled.uri, lab["ldap"]["uri"]], receive_timeout=1.0)
        t0 = time.monotonic()
        assert (await login(auth, "alice", passwords(lab)["alice"]))["name"] == "alice"
        took = time.monotonic() - t0
        assert 1.0 <= took < 2.0, took
        assert stalled.accepted == 1


async def _loop_lag_during(coro: Any) -> tuple[Any, float, float]:
    """Run `coro` while a ticker measures how late the event loop wakes it (every 10 ms)."""
    loop = asyncio.get_running_loop()
    worst = 0.0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal worst
        while not done.is_set():
            t = loop.time()
            await asyncio.sleep(0.01)
            worst = max(worst, loop.time() - t - 0.01)

    tick = asyncio.create_task(ticker())
    t0 = loop.time()
    try:
        result = await coro
    except Exception as err:  # the refusal is the result here
        result = err
    took = loop.time() - t0
    done.set()
    await tick
    return result, took, worst


@pytest.mark.parametrize("scheme", ["ldap", "ldaps"])
async def test_a_server_that_never_answers_gives_the_unavailable_sentence_in_time(
        lab: dict[str, Any], scheme: str) -> None:
    with StalledListener() as stalled:
        url = stalled.uri if scheme == "ldap" else stalled.ldaps_uri
        auth = make(lab, server_urls=[url], connect_timeout=1.0, receive_timeout=1.5, login_timeout=10)
        result, took, lag = await _loop_lag_during(
            auth.get_authenticated_user(None, {"username": "alice", "password": passwords(lab)["alice"]}))
    assert isinstance(result, web.HTTPError)
    assert (result.status_code, result.log_message) == (503, UNAVAILABLE)
    assert 1.5 <= took < 2.0, took
    assert lag < 0.1, f"the event loop was held for {lag:.3f} s"


async def test_logins_queued_behind_a_stall_end_at_login_timeout(lab: dict[str, Any]) -> None:
    with StalledListener() as stalled:
        auth = make(lab, server_urls=[stalled.uri], receive_timeout=3.0, login_timeout=1.0,
                    max_concurrent_logins=2)
        data = {"username": "alice", "password": passwords(lab)["alice"]}
        t0 = time.monotonic()
        results = await asyncio.gather(*(auth.authenticate(None, data) for _ in range(6)),
                                       return_exceptions=True)
        took = time.monotonic() - t0
    assert all(isinstance(r, web.HTTPError) and r.log_message == UNAVAILABLE for r in results), results
    assert took < 1.5, took


async def test_an_outage_costs_one_wait_not_one_per_login(lab: dict[str, Any]) -> None:
    with StalledListener() as stalled:
        auth = make(lab, server_urls=[stalled.uri], receive_timeout=1.0, login_timeout=10,
                    all_down_retry_interval=30)
        data = {"username": "alice", "password": passwords(lab)["alice"]}
        result, took, _ = await _loop_lag_during(auth.get_authenticated_user(None, data))
        assert isinstance(result, web.HTTPError) and result.log_message == UNAVAILABLE
        assert took >= 1.0, took
        # Every server failed moments ago: the next logins hear it at once, in the same words.
        t0 = time.monotonic()
        results = await asyncio.gather(*(auth.get_authenticated_user(None, data) for _ in range(5)),
                                       return_exceptions=True)
        assert time.monotonic() - t0 < 0.3
        assert all(isinstance(r, web.HTTPError) and (r.status_code, r.log_message) ==
                   (503, UNAVAILABLE) for r in results), results
        assert stalled.accepted == 1


async def test_a_directory_that_comes_back_is_noticed(lab: dict[str, Any], tmp_path: Path) -> None:
    copy = start_directory_copy(lab, tmp_path / "flaky")
    try:
        auth = make(lab, server_urls=[copy.uri], all_down_retry_interval=1.0)
        pw = passwords(lab)
        assert (await login(auth, "alice", pw["alice"]))["name"] == "alice"
        copy.stop()
        assert (await refused(auth, "alice", pw["alice"])).log_message == UNAVAILABLE
        copy.start()
        # within all_down_retry_interval of the failure: still answered at once
        assert (await refused(auth, "bob", pw["bob"])).log_message == UNAVAILABLE
        await asyncio.sleep(1.1)
        # A refusal is an answer too: it ends the outage like a login does.
        assert (await refused(auth, "bob", "not-his-password")).log_message == WRONG_CREDENTIALS
        models = await asyncio.gather(*(login(auth, "bob", pw["bob"]) for _ in range(4)))
        assert [m["name"] for m in models] == ["bob"] * 4
    finally:
        copy.stop()


async def test_starttls_refused_by_the_server_is_explained_and_plaintext_needs_asking(
        lab: dict[str, Any], tmp_path: Path) -> None:
    no_tls = start_directory_copy(lab, tmp_path / "no-tls", tls=False)
    try:
        with pytest.raises(DirectoryUnavailable, match="refused StartTLS") as err:
            client(lab, no_tls.uri).login("alice", passwords(lab)["alice"])
        assert "starttls = False" in str(err.value)
        err_page = await refused(make(lab, server_urls=[no_tls.uri]), "alice", passwords(lab)["alice"])
        assert (err_page.status_code, err_page.log_message) == (503, UNAVAILABLE)
        insecure = make(lab, server_urls=[no_tls.uri], starttls=False)
        assert (await login(insecure, "alice", passwords(lab)["alice"]))["name"] == "alice"
    finally:
        no_tls.stop()


# -- nested groups and memberOf, on a private copy with the memberof overlay ------------------------------


@pytest.fixture(scope="module")
def scratch(lab: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[DirectoryCopy]:
    copy = start_directory_copy(lab, tmp_path_factory.mktemp("scratch-directory"), memberof=True)
    ldap = lab["ldap"]
    names, people = ldap["named_groups_dn"], ldap["people_dn"]
    suffix = people.split(",", 1)[1]
    admin = ldap3.Connection(ldap3.Server("127.0.0.1", port=copy.port, get_info=ldap3.NONE),
                             ldap["admin_dn"], passwords(lab)["admin"], auto_bind=True, receive_timeout=5)
    entries = [
        # soundscape-lab -> nest-outer -> nest-a <-> nest-b (a cycle)
        (f"cn=nest-outer,{names}", ["groupOfNames"], {"member": [f"cn=soundscape-lab,{names}"]}),
        (f"cn=nest-b,{names}", ["groupOfNames"], {"member": [f"cn=nest-outer,{names}"]}),
        (f"cn=nest-a,{names}", ["groupOfNames"],
         {"member": [f"cn=nest-outer,{names}", f"cn=nest-b,{names}"]}),
        # groupOfUniqueNames with uniqueMember
        (f"cn=uniq-lab,{names}", ["groupOfUniqueNames"], {"uniqueMember": [f"uid=alice,{people}"]}),
        # created after the start: the overlay writes memberOf on alice; mo-parent holds mo-group
        (f"cn=mo-group,{names}", ["groupOfNames"], {"member": [f"uid=alice,{people}"]}),
        (f"cn=mo-parent,{names}", ["groupOfNames"], {"member": [f"cn=mo-group,{names}"]}),
        # outside the group base, e.g. where users may make groups: a same-named "hub-admins"
        (f"ou=self-service,{suffix}", ["organizationalUnit"], {"ou": "self-service"}),
        (f"cn=hub-admins,ou=self-service,{suffix}", ["groupOfNames"],
         {"member": [f"uid=alice,{people}"]}),
    ]
    try:
        for dn, classes, attrs in entries:
            assert admin.add(dn, classes, attrs), admin.result
        # nest-b also contains nest-a: the cycle is closed after both exist
        assert admin.modify(f"cn=nest-b,{names}", {"member": [(ldap3.MODIFY_ADD, [f"cn=nest-a,{names}"])]})
        admin.search(f"uid=alice,{people}", "(objectClass=*)", ldap3.BASE, attributes=["memberOf"])
        assert f"cn=mo-group,{names}".lower() in [v.lower() for v in admin.entries[0].memberOf.values]
        admin.unbind()
        yield copy
    finally:
        copy.stop()


async def test_nested_groups_bounded_and_cycle_safe(lab: dict[str, Any], scratch: DirectoryCopy) -> None:
    pw = passwords(lab)
    deep = make(lab, server_urls=[scratch.uri], allowed_groups={"nest-b"}, admin_groups=set(),
                member_of_attribute="")
    model = await login(deep, "alice", pw["alice"])
    groups = set(model["auth_state"]["groups"])
    assert {"soundscape-lab", "nest-outer", "nest-a", "nest-b", "uniq-lab"} <= groups
    assert (await refused(deep, "carol", pw["carol"])).log_message == NOT_ALLOWED  # not in soundscape-lab
    # nest-b is two levels above nest-outer's parent: depth 1 stops at nest-outer
    shallow = make(lab, server_urls=[scratch.uri], allowed_groups={"nest-b"}, admin_groups=set(),
                   nested_group_depth=1, member_of_attribute="")
    assert (await refused(shallow, "alice", pw["alice"])).log_message == NOT_ALLOWED
    flat = make(lab, server_urls=[scratch.uri], allow_all=True, nested_group_depth=0, member_of_attribute="")
    groups = (await login(flat, "alice", pw["alice"]))["auth_state"]["groups"]
    assert "nest-outer" not in groups and "uniq-lab" in groups


async def test_member_of_on_the_user_entry(lab: dict[str, Any], scratch: DirectoryCopy) -> None:
    pw = passwords(lab)
    only_member_of = {"server_urls": [scratch.uri], "group_search_filter": "", "primary_group": False,
                      "admin_groups": set()}
    auth = make(lab, allowed_groups={"mo-parent"}, **only_member_of)
    groups = (await login(auth, "alice", pw["alice"]))["auth_state"]["groups"]
    # memberOf, then followed up one level; the self-service "hub-admins" is outside the base
    assert groups == ["mo-group", "mo-parent"]
    ignored = make(lab, allowed_groups={"mo-group"}, member_of_attribute="", **only_member_of)
    assert (await refused(ignored, "alice", pw["alice"])).log_message == NOT_ALLOWED


def test_lab_directory_is_untouched(lab: dict[str, Any]) -> None:
    groups = client(lab, lab["ldap"]["uri"]).login("alice", passwords(lab)["alice"]).groups
    assert groups == ("hpc-users", "soundscape-lab", "soundscape-leads")


def test_directory_copy_serves_the_lab_people(lab: dict[str, Any], tmp_path: Path) -> None:
    copy = start_directory_copy(lab, tmp_path / "copy")
    try:
        pw = json.loads(Path(lab["ldap"]["passwords_file"]).read_text())
        assert client(lab, copy.ldaps_uri).login("carol", pw["carol"]).uid_number == 5003
    finally:
        copy.stop()
    assert not copy.running()
