"""The authenticator's configuration, start-up checks and decisions, without a directory."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from tornado import web

from auth.authenticator import (
    NOT_ALLOWED,
    THROTTLED,
    UNAVAILABLE,
    WRONG_CREDENTIALS,
    AuthStateKeyMissing,
    LDAPAuthenticator,
)
from auth.directory import DirectoryConfigError, DirectoryUnavailable, Identity, LoginRefused

BASE: dict[str, Any] = {
    "server_urls": ["ldap://ldap.example.org"],
    "service_dn": "cn=svc,dc=example,dc=org",
    "service_password": "secret",
    "user_search_base": "ou=people,dc=example,dc=org",
    "enable_auth_state": False,
}

ALICE = Identity(dn="uid=alice,ou=people,dc=example,dc=org", uid="alice", uid_number=5001,
                 gid_number=5100, home="/home/alice", login_shell="/bin/bash",
                 groups=("hpc-users", "soundscape-lab"),
                 group_dns=("cn=hpc-users,ou=names,ou=groups,dc=example,dc=org",
                            "cn=soundscape-lab,ou=names,ou=groups,dc=example,dc=org"))


class FakeDirectory:
    """Stands in for DirectoryClient: records calls and their threads; answers as told."""

    def __init__(self, answer: Any = ALICE):
        self.answer = answer
        self.calls: list[tuple[str, str]] = []
        self.threads: set[str] = set()

    def login(self, username: str, password: str) -> Identity:
        self.calls.append((username, password))
        self.threads.add(threading.current_thread().name)
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer

    def lookup(self, username: str) -> Identity | None:
        return self.login(username, "")


def make(**overrides: Any) -> LDAPAuthenticator:
    return LDAPAuthenticator(**{**BASE, **overrides})


def with_fake(auth: LDAPAuthenticator, answer: Any = ALICE) -> FakeDirectory:
    fake = FakeDirectory(answer)
    auth._directory = fake  # type: ignore[assignment]
    return fake


def test_missing_crypt_key_is_a_clear_start_up_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JUPYTERHUB_CRYPT_KEY", raising=False)
    with pytest.raises(AuthStateKeyMissing, match="JUPYTERHUB_CRYPT_KEY is not set.*openssl rand -hex 32"):
        LDAPAuthenticator(**{k: v for k, v in BASE.items() if k != "enable_auth_state"})
    monkeypatch.setenv("JUPYTERHUB_CRYPT_KEY", "ab" * 32)
    assert LDAPAuthenticator(**{k: v for k, v in BASE.items() if k != "enable_auth_state"}).enable_auth_state


@pytest.mark.parametrize("overrides, message", [
    ({"server_urls": []}, "No directory server configured"),
    ({"server_urls": ["ldap.example.org"]}, "not a directory server URL"),
    ({"service_dn": "", "bind_dn_template": []}, "service_dn"),
    ({"service_password": ""}, "no service_password"),
    ({"user_search_base": ""}, "user_search_base"),
    ({"bind_dn_template": ["uid=x,dc=example,dc=org"]}, "no {username} placeholder"),
    ({"user_search_filter": "(uid={user})"}, "placeholder"),
    ({"tls_ca_file": "/nonexistent/ca.pem"}, "does not exist"),
    ({"receive_timeout": 0.0}, "must be positive"),
])
def test_broken_settings_stop_the_hub_with_the_reason(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(DirectoryConfigError, match=message):
        make(**overrides)


def test_every_setting_has_help_and_safe_defaults() -> None:
    traits = LDAPAuthenticator.class_own_traits(config=True)
    assert len(traits) >= 30
    for name, trait in traits.items():
        assert len(trait.help.split()) >= 4, name
    auth = make()
    assert auth.tls_verify and auth.starttls and auth.connect_timeout > 0 and auth.receive_timeout > 0


def test_service_password_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HPCGATE_LDAP_SERVICE_PASSWORD", "from-env")
    auth = LDAPAuthenticator(**{k: v for k, v in BASE.items() if k != "service_password"})
    assert auth.service_password == "from-env"


@pytest.mark.parametrize("name", ["*", "a*", ")(uid=*", "alice\x00", "alice,ou=x", "x" * 5000, "", "alice\n"])
async def test_invalid_names_never_reach_the_directory(name: str) -> None:
    auth = make()
    fake = with_fake(auth)
    with pytest.raises(web.HTTPError) as err:
        await auth.authenticate(None, {"username": name, "password": "whatever"})
    assert (err.value.status_code, err.value.log_message) == (403, WRONG_CREDENTIALS)
    assert fake.calls == []


async def test_directory_work_runs_in_worker_threads_not_on_the_loop() -> None:
    auth = make()
    fake = with_fake(auth)
    model = await auth.authenticate(None, {"username": "Alice", "password": "pw"})
    assert fake.calls == [("alice", "pw")]  # normalized (lower case) before the directory sees it
    assert fake.threads and all(t.startswith("hpcgate-ldap") for t in fake.threads)
    assert model["name"] == "alice"
    assert model["auth_state"] == {
        "dn": ALICE.dn, "uid": "alice", "uidNumber": 5001, "gidNumber": 5100,
        "homeDirectory": "/home/alice", "loginShell": "/bin/bash",
        "groups": ["hpc-users", "soundscape-lab"], "group_dns": list(ALICE.group_dns)}
    assert "admin" not in model and "groups" not in model


@pytest.mark.parametrize("error, status, message", [
    (LoginRefused("wrong password"), 403, WRONG_CREDENTIALS),
    (LoginRefused("unknown user"), 403, WRONG_CREDENTIALS),
    (DirectoryUnavailable("ldap://x: no answer within 5 s"), 503, UNAVAILABLE),
    (RuntimeError("a bug"), 503, UNAVAILABLE),
])
async def test_failures_become_sentences_never_500(error: Exception, status: int, message: str) -> None:
    auth = make()
    with_fake(auth, error)
    with pytest.raises(web.HTTPError) as err:
        await auth.authenticate(None, {"username": "alice", "password": "pw"})
    assert (err.value.status_code, err.value.log_message) == (status, message)


async def test_a_stuck_directory_call_ends_at_login_timeout() -> None:
    auth = make(login_timeout=0.3)
    release = threading.Event()

    class Stuck(FakeDirectory):
        def login(self, username: str, password: str) -> Identity:
            release.wait(5)
            return ALICE

    auth._directory = Stuck()  # type: ignore[assignment]
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    try:
        with pytest.raises(web.HTTPError) as err:
            await auth.authenticate(None, {"username": "alice", "password": "pw"})
    finally:
        release.set()
    assert err.value.status_code == 503
    assert loop.time() - t0 < 1.0


async def test_failed_logins_are_throttled_per_user() -> None:
    auth = make(failed_logins_per_user=2, failed_login_window=60)
    fake = with_fake(auth, LoginRefused("wrong password"))
    for _ in range(2):
        with pytest.raises(web.HTTPError):
            await auth.authenticate(None, {"username": "alice", "password": "guess"})
    with pytest.raises(web.HTTPError) as err:
        await auth.authenticate(None, {"username": "alice", "password": "right"})
    assert err.value.status_code == 429
    assert err.value.log_message == THROTTLED.format(seconds=60)
    assert err.value.log_message.startswith("Too many failed logins; try again in ")
    assert len(fake.calls) == 2  # the throttled attempt never reached the directory


def test_allowed_groups_by_name_or_dn_and_a_clear_refusal() -> None:
    model = {"name": "alice", "auth_state": ALICE.auth_state()}
    assert make(allowed_groups={"soundscape-lab"}).check_allowed("alice", model)
    assert make(allowed_groups={"CN=Soundscape-Lab,ou=names,ou=groups,dc=example,dc=org"}).check_allowed(
        "alice", model)
    assert make(admin_groups={"hpc-users"}).check_allowed("alice", model)  # admins may log in
    with pytest.raises(web.HTTPError) as err:
        make(allowed_groups={"hub-admins"}).check_allowed("alice", model)
    assert (err.value.status_code, err.value.log_message) == (403, NOT_ALLOWED)
    assert "hub-admins" not in NOT_ALLOWED  # says nothing about the site's groups
    assert make(allow_all=True).check_allowed("alice", model)
    assert make(allowed_users={"alice"}).check_allowed("alice", model)


async def test_admin_follows_admin_groups_and_groups_are_managed_on_request() -> None:
    auth = make(admin_groups={"soundscape-lab"}, manage_groups=True)
    with_fake(auth)
    model = await auth.authenticate(None, {"username": "alice", "password": "pw"})
    assert model["admin"] is True and model["groups"] == ["hpc-users", "soundscape-lab"]
    auth = make(admin_groups={"hub-admins"})
    with_fake(auth)
    assert (await auth.authenticate(None, {"username": "alice", "password": "pw"}))["admin"] is False


async def test_refresh_user_follows_the_directory() -> None:
    class User:
        name = "alice"

    auth = make(allowed_groups={"soundscape-lab"})
    with_fake(auth)
    refreshed = await auth.refresh_user(User())
    assert isinstance(refreshed, dict) and refreshed["auth_state"]["uidNumber"] == 5001
    with_fake(auth, None)  # gone from the directory
    assert await auth.refresh_user(User()) is False
    with_fake(auth, DirectoryUnavailable("down"))  # keep working while the directory is away
    assert await auth.refresh_user(User()) is True
    with_fake(auth, Identity(dn=ALICE.dn, uid="alice", groups=("hpc-users",)))
    assert await auth.refresh_user(User()) is False  # left the allowed groups
