"""hpcgate's LDAP authenticator against the lab's real slapd: TLS, refusals, groups, injection."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from auth.authenticator import NOT_ALLOWED, UNAVAILABLE, WRONG_CREDENTIALS
from auth.directory import DirectoryUnavailable, LoginRefused
from tests.helpers.ldap import client, login, make, passwords, refused

pytestmark = pytest.mark.lab


@pytest.mark.parametrize("url_key", ["uri", "ldaps_uri"])
async def test_alice_logs_in_over_starttls_and_ldaps(lab: dict[str, Any], url_key: str) -> None:
    auth = make(lab, server_urls=[lab["ldap"][url_key]])
    model = await login(auth, "alice", passwords(lab)["alice"])
    state = model["auth_state"]
    assert model["name"] == "alice" and model["admin"] is False
    assert {k: state[k] for k in ("dn", "uid", "uidNumber", "gidNumber", "homeDirectory", "loginShell")} == {
        "dn": f"uid=alice,{lab['ldap']['people_dn']}", "uid": "alice", "uidNumber": 5001,
        "gidNumber": 5100, "homeDirectory": lab["users"]["alice"]["workdir"], "loginShell": "/bin/bash"}
    assert state["groups"] == ["hpc-users", "soundscape-lab", "soundscape-leads"]
    assert f"cn=soundscape-lab,{lab['ldap']['named_groups_dn']}" in state["group_dns"]
    assert f"cn=soundscape-lab,{lab['ldap']['posix_groups_dn']}" in state["group_dns"]


async def test_wrong_password_and_unknown_user_get_the_same_sentence(lab: dict[str, Any]) -> None:
    auth = make(lab)
    for username, password in [("alice", "not-her-password"), ("nobody", "whatever"),
                               ("alice", passwords(lab)["bob"])]:
        err = await refused(auth, username, password)
        assert (err.status_code, err.log_message) == (403, WRONG_CREDENTIALS)


def test_unknown_user_and_wrong_password_cost_the_same_requests(lab: dict[str, Any]) -> None:
    """An unknown name is refused after a bind too (to a DN that cannot exist), so the time a
    refusal takes does not tell which names exist."""
    from auth.directory import LoginRefused

    for username, password in [("nobody", "whatever"), ("alice", "not-her-password")]:
        c = client(lab, lab["ldap"]["uri"])
        with pytest.raises(LoginRefused):
            c.login(username, password)
        assert c.connections_opened() == 2, username  # one search connection, one bind connection
        c.close()


async def test_empty_password_is_never_sent_as_an_unauthenticated_bind(lab: dict[str, Any]) -> None:
    err = await refused(make(lab), "alice", "")
    assert (err.status_code, err.log_message) == (403, WRONG_CREDENTIALS)


async def test_user_outside_the_allowed_groups_is_refused_clearly(lab: dict[str, Any]) -> None:
    auth = make(lab, allowed_groups={"soundscape-lab"}, admin_groups=set())
    assert (await login(auth, "bob", passwords(lab)["bob"]))["name"] == "bob"
    err = await refused(auth, "carol", passwords(lab)["carol"])
    assert (err.status_code, err.log_message) == (403, NOT_ALLOWED)
    # the wrong password of the same user still gets the generic sentence: nothing learnt by guessing
    err = await refused(auth, "carol", "guess")
    assert err.log_message == WRONG_CREDENTIALS


async def test_admin_by_group(lab: dict[str, Any]) -> None:
    auth = make(lab)
    carol = await login(auth, "carol", passwords(lab)["carol"])
    assert carol["admin"] is True and "hub-admins" in carol["auth_state"]["groups"]
    assert (await login(auth, "alice", passwords(lab)["alice"]))["admin"] is False
    by_dn = make(lab, admin_groups={f"cn=hub-admins,{lab['ldap']['named_groups_dn']}"})
    assert (await login(by_dn, "carol", passwords(lab)["carol"]))["admin"] is True


async def test_groups_are_managed_when_asked(lab: dict[str, Any]) -> None:
    auth = make(lab, manage_groups=True)
    model = await login(auth, "carol", passwords(lab)["carol"])
    assert model["groups"] == ["hpc-users", "hub-admins"]


async def test_dn_template_binding_without_a_service_account(lab: dict[str, Any]) -> None:
    auth = make(lab, service_dn="", service_password="",
                bind_dn_template=[f"uid={{username}},ou=nowhere,{lab['ldap']['base_dn']}",
                                  f"uid={{username}},{lab['ldap']['people_dn']}"])
    model = await login(auth, "alice", passwords(lab)["alice"])
    assert model["auth_state"]["uidNumber"] == 5001 and "soundscape-lab" in model["auth_state"]["groups"]
    assert (await refused(auth, "alice", "nope")).log_message == WRONG_CREDENTIALS


INJECTIONS = [
    ("*", "bob"), ("a*", "alice"), ("*)(uid=*", "alice"), (")(uid=*", "bob"), ("alice)(uid=*", "alice"),
    ("alice)(|(uid=*", "alice"), ("*)(objectClass=*", "carol"), ("\\2a", "bob"), ("alice\x00", "alice"),
    ("\x00", "alice"), ("alice,ou=people,dc=example,dc=org", "alice"), ("alice+cn=x", "alice"),
    ("alice=", "alice"), ("alice\\", "alice"), ("uid=alice", "alice"), ("alice ", "alice"),
    (" alice", "alice"), ("a" * 10_000, "alice"), ("alice" + "\u200b", "alice"),
    ("svc-hpcgate", "svc-hpcgate"),
    ("cn=admin,dc=example,dc=org", "admin"), ("admin", "admin"),
]


@pytest.mark.parametrize("mode", ["default-pattern", "permissive-search", "permissive-template"])
async def test_injection_attempts_never_authenticate_anyone(lab: dict[str, Any], mode: str) -> None:
    """With the default name check these never reach the directory; with a permissive pattern they do,
    and escaping (plus the check that the entry found carries the typed name) still refuses them."""
    overrides: dict[str, Any] = {"allow_all": True}
    if mode != "default-pattern":
        overrides["valid_username_pattern"] = r".+"
    if mode == "permissive-template":
        overrides.update(service_dn="", service_password="",
                         bind_dn_template=[f"uid={{username}},{lab['ldap']['people_dn']}"])
    auth = make(lab, **overrides)
    pw = passwords(lab)
    for username, whose in INJECTIONS:
        err = await refused(auth, username, pw[whose])
        assert (err.status_code, err.log_message) == (403, WRONG_CREDENTIALS), (username, err)
    # the same authenticator still logs the real alice in
    assert (await login(auth, "alice", pw["alice"]))["name"] == "alice"


async def test_insecure_only_when_asked(lab: dict[str, Any], tmp_path: Path) -> None:
    from gateway.lab.tls import make_ca_and_server_cert

    make_ca_and_server_cert(tmp_path, ["localhost"], ["127.0.0.1"])  # some other CA
    strict = make(lab, tls_ca_file=str(tmp_path / "ca.crt"))
    err = await refused(strict, "alice", passwords(lab)["alice"])
    assert (err.status_code, err.log_message) == (503, UNAVAILABLE)
    lax = make(lab, tls_ca_file=str(tmp_path / "ca.crt"), tls_verify=False)
    assert (await login(lax, "alice", passwords(lab)["alice"]))["name"] == "alice"


def test_server_and_setting_disagreements_are_explained(lab: dict[str, Any], tmp_path: Path) -> None:
    from gateway.lab.tls import make_ca_and_server_cert

    ldap, pw = lab["ldap"], passwords(lab)["alice"]
    host, plain, tls = ldap["host"], ldap["port"], ldap["ldaps_port"]
    make_ca_and_server_cert(tmp_path, ["localhost"], ["127.0.0.1"])
    cases = [
        (f"ldaps://{host}:{plain}", {}, f"use ldap://{host}:{plain} (StartTLS)"),
        (f"ldap://{host}:{tls}", {}, f"use ldaps://{host}:{tls}"),
        (f"ldap://{host}:{plain}", {"tls_ca_file": str(tmp_path / "ca.crt")}, "not trusted by"),
        (f"ldap://{host}:{plain}", {"service_password": "wrong"}, "service account"),
        (f"ldap://{host}:{plain}", {"user_search_base": "ou=nowhere,dc=example,dc=org"}, "does not exist"),
    ]
    for url, overrides, hint in cases:
        with pytest.raises(DirectoryUnavailable, match="no directory server answered") as err:
            client(lab, url, **overrides).login("alice", pw)
        assert hint in str(err.value), (url, overrides, str(err.value))


def test_connections_are_reused(lab: dict[str, Any]) -> None:
    directory = client(lab, lab["ldap"]["uri"])
    pw = passwords(lab)
    for _ in range(30):
        assert directory.login("alice", pw["alice"]).uid == "alice"
        with pytest.raises(LoginRefused):
            directory.login("bob", "wrong")
    # one service connection and one bind connection, for 60 logins
    assert directory.connections_opened() == 2
    directory.close()


def test_tcp_nodelay_removes_the_delayed_ack_stall(lab: dict[str, Any]) -> None:
    """A new TLS connection per login (pool_size=0) shows the Nagle/delayed-ACK stall best."""
    pw = passwords(lab)["alice"]

    def per_login(nodelay: bool) -> float:
        directory = client(lab, lab["ldap"]["uri"], pool_size=0, tcp_nodelay=nodelay,
                           nested_group_depth=0)
        times = []
        for _ in range(12):
            t0 = time.perf_counter()
            directory.login("alice", pw)
            times.append(time.perf_counter() - t0)
        return sorted(times)[len(times) // 2]

    with_nodelay, without = per_login(True), per_login(False)
    # each new TLS connection's first request waits for a delayed ACK (~40 ms) without TCP_NODELAY
    assert without > 0.04 and with_nodelay < without / 3, (with_nodelay, without)
