"""Through a real JupyterHub and configurable-http-proxy: what the login page says, and a hub that keeps
answering while the directory stalls. Each hub runs on free loopback ports and is stopped (process
group and proxy) even when a test fails."""

from __future__ import annotations

import asyncio
import contextlib
import html
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from auth.authenticator import NOT_ALLOWED, THROTTLED, UNAVAILABLE, WRONG_CREDENTIALS
from gateway.lab.procs import LabError
from gateway.lab.replica import HubProcess, StalledListener
from tests.helpers.lab import passwords
from tests.helpers.portal import Portal

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
PROBE_TOKEN = secrets.token_hex(24)


def hub_config(lab: dict[str, Any], server_urls: list[str], **extra: Any) -> str:
    ldap = lab["ldap"]
    lines = [
        'c.JupyterHub.authenticator_class = "auth.authenticator.LDAPAuthenticator"',
        f"c.LDAPAuthenticator.server_urls = {server_urls!r}",
        f"c.LDAPAuthenticator.tls_ca_file = {ldap['ca_cert']!r}",
        f"c.LDAPAuthenticator.service_dn = {ldap['service_dn']!r}",
        f"c.LDAPAuthenticator.user_search_base = {ldap['people_dn']!r}",
        f"c.LDAPAuthenticator.group_search_base = {ldap['groups_dn']!r}",
        # a probe service that may read users and their auth_state
        f'c.JupyterHub.services = [{{"name": "probe", "api_token": {PROBE_TOKEN!r}}}]',
        'c.JupyterHub.load_roles = [{"name": "probe", "scopes": ["admin:users", "admin:auth_state"], '
        '"services": ["probe"]}]',
    ]
    lines += [f"c.LDAPAuthenticator.{k} = {v!r}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def start_hub(lab: dict[str, Any], workdir: Path, config: str, crypt_key: bool = True) -> HubProcess:
    env = {"HPCGATE_LDAP_SERVICE_PASSWORD": passwords(lab)["svc-hpcgate"]}
    if crypt_key:
        env["JUPYTERHUB_CRYPT_KEY"] = secrets.token_hex(32)
    hub = HubProcess(workdir, config, env=env, pythonpath=str(REPO))
    try:
        hub.start()
    except BaseException:
        hub.stop()
        raise
    return hub


@contextlib.contextmanager
def running_hub(lab: dict[str, Any], tmp_path_factory: pytest.TempPathFactory, name: str,
                server_urls: list[str] | None = None, **settings: Any) -> Iterator[HubProcess]:
    """A hub with these LDAPAuthenticator settings (the lab's directory unless `server_urls`),
    stopped whatever happens."""
    config = hub_config(lab, server_urls or [lab["ldap"]["uri"]], **settings)
    hub = start_hub(lab, tmp_path_factory.mktemp(f"hub-{name}"), config)
    try:
        yield hub
    finally:
        hub.stop()


@pytest.fixture(scope="module")
def directory_hub(lab: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    with running_hub(lab, tmp_path_factory, "directory", allowed_groups={"hub-admins"},
                     admin_groups={"hub-admins"}, failed_logins_per_user=3) as hub:
        yield hub


@pytest.fixture(scope="module")
def address_hub(lab: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    # No per-name limit: only the per-address one can stop a spray over many names.
    with running_hub(lab, tmp_path_factory, "address", allow_all=True, failed_logins_per_user=0,
                     failed_logins_per_address=5) as hub:
        yield hub


@pytest.fixture(scope="module")
def stalled_hub(lab: dict[str, Any],
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HubProcess, StalledListener]]:
    with StalledListener() as stalled, running_hub(lab, tmp_path_factory, "stalled", [stalled.uri],
                                                   allow_all=True, connect_timeout=1.0,
                                                   receive_timeout=2.0) as hub:
        yield hub, stalled


def session() -> aiohttp.ClientSession:
    # unsafe=True: keep cookies set by an IP-address host (127.0.0.1)
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                 timeout=aiohttp.ClientTimeout(total=30))


async def post_login(s: aiohttp.ClientSession, hub: HubProcess, username: str,
                     password: str) -> tuple[int, str, dict[str, str], float]:
    """Like a browser: fetch the form (and its xsrf token), post it; status, page text, headers, seconds."""
    async with s.get(f"{hub.url}/hub/login") as page:
        assert page.status == 200
        token = re.search(r'name="_xsrf" value="([^"]+)"', await page.text())
    assert token, "no _xsrf in the login form"
    t0 = time.monotonic()
    async with s.post(f"{hub.url}/hub/login", allow_redirects=False,
                      data={"username": username, "password": password, "_xsrf": token.group(1)}) as resp:
        text = html.unescape(await resp.text())
        return resp.status, text, dict(resp.headers), time.monotonic() - t0


def login_error(page: str) -> str:
    found = re.search(r'<p class="login_error">(.*?)</p>', page, re.DOTALL)
    return found.group(1).strip() if found else ""


async def test_login_page_shows_each_sentence_with_its_status(lab: dict[str, Any],
                                                              directory_hub: HubProcess) -> None:
    hub, pw = directory_hub, passwords(lab)
    async with session() as s:
        status, page, headers, _ = await post_login(s, hub, "carol", pw["carol"])
        assert status == 302, hub.log_tail()
        assert headers["Location"].startswith("/hub/")
    async with session() as s:
        for username, password, want_status, sentence in [
            ("alice", pw["alice"], 403, NOT_ALLOWED),  # right password, not in hub-admins
            ("alice", "not-her-password", 403, WRONG_CREDENTIALS),
            ("nobody", "whatever", 403, WRONG_CREDENTIALS),
            ("*", pw["bob"], 403, WRONG_CREDENTIALS),
            (")(uid=*", pw["carol"], 403, WRONG_CREDENTIALS),
        ]:
            status, page, _, _ = await post_login(s, hub, username, password)
            assert (status, login_error(page)) == (want_status, sentence), (username, hub.log_tail())
            assert 'name="password"' in page  # the login form again, not an error page


async def test_carol_is_admin_and_her_identity_is_in_auth_state(lab: dict[str, Any],
                                                                directory_hub: HubProcess) -> None:
    async with session() as s:
        status, _, _, _ = await post_login(s, directory_hub, "carol", passwords(lab)["carol"])
        assert status == 302
        async with s.get(f"{directory_hub.url}/hub/api/users/carol",
                         headers={"Authorization": f"token {PROBE_TOKEN}"}) as resp:
            assert resp.status == 200, await resp.text()
            user = await resp.json()
    assert user["admin"] is True
    state = user["auth_state"]
    assert (state["uid"], state["uidNumber"], state["gidNumber"], state["homeDirectory"]) == (
        "carol", 5003, 5100, lab["users"]["carol"]["workdir"])  # this lab's home, not /home
    assert state["groups"] == ["hpc-users", "hub-admins"]


async def test_repeated_failures_are_throttled_on_the_page(lab: dict[str, Any],
                                                           directory_hub: HubProcess) -> None:
    async with session() as s:
        for _ in range(3):
            status, page, _, _ = await post_login(s, directory_hub, "bob", "guess")
            assert login_error(page) == WRONG_CREDENTIALS
        status, page, _, _ = await post_login(s, directory_hub, "bob", passwords(lab)["bob"])
    assert status == 429
    message = login_error(page)
    assert re.fullmatch(THROTTLED.replace("{seconds}", r"\d+").replace(".", r"\.").replace("(", r"\(")
                        .replace(")", r"\)"), message), message


@pytest.fixture(scope="module")
def open_hub(lab: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    # No throttle: hundreds of hostile attempts in a row, each judged on its own.
    with running_hub(lab, tmp_path_factory, "open", allow_all=True, failed_logins_per_user=0,
                     failed_logins_per_address=0) as hub:
        yield hub


_HOSTILE = ["*", ")", "(", "\\", "\x00", ",", "+", "=", '"', "<", ">", ";", "#", " ", "\n", "%", "\u0130"]


@st.composite
def _hostile_login(draw: st.DrawFn) -> tuple[str, str, str]:
    """(base name, what is typed as the name, password kind): a real or unknown name dressed in
    filter and DN metacharacters, NUL, mixed case or length."""
    base = draw(st.sampled_from(["alice", "bob", "carol", "nobody"]))
    name = base
    for _ in range(draw(st.integers(0, 3))):
        piece = draw(st.sampled_from(_HOSTILE + ["uid=*", "*)(uid=*", "," + "ou=people"]))
        name = draw(st.sampled_from([name + piece, piece + name, name]))
    name = draw(st.sampled_from([name, name.upper(), name.title(), name * 40]))
    return base, name, draw(st.sampled_from(["right", "wrong", "right+noise", "empty", "star"]))


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(attempt=_hostile_login())
@example(attempt=("alice", "ALICE", "right"))  # the real thing, in capitals: in
@example(attempt=("bob", "bob)(uid=*", "right"))  # a filter around the right password: out
@example(attempt=("carol", "carol\x00", "right"))  # arrives as "carol": in
@example(attempt=("carol", "carol\x00*", "right"))  # arrives as "carol*": out
@example(attempt=("alice", "alice ", "right"))  # arrives stripped, as "alice": in
def test_hostile_names_and_passwords_through_the_real_login_page(lab: dict[str, Any],
                                                                 open_hub: HubProcess,
                                                                 attempt: tuple[str, str, str]) -> None:
    base, name, kind = attempt
    right = passwords(lab).get(base, "")
    password = {"right": right, "wrong": "guess", "right+noise": right + "\x00*", "empty": "",
                "star": "*"}[kind]
    portal = Portal(open_hub.url)
    status, url, _ = portal.login(name, password)
    assert status < 500, (name, kind, status)
    logged_in = status == 200 and not url.rstrip("/").endswith("/hub/login")
    # The person with their own password, their name in any case, gets in; nothing else does.
    # (tornado drops control characters from form values before the hub sees them: "carol\0"
    # arrives as "carol"; and get_argument strips surrounding whitespace: "alice " is "alice".)
    received = re.sub(r"[\x00-\x08\x0e-\x1f]", "", name).strip()
    may = base != "nobody" and kind == "right" and received.lower() == base
    assert logged_in == may, f"{name!r} with a {kind} password: logged in {logged_in}"


def test_no_hostile_login_made_a_second_user(open_hub: HubProcess) -> None:
    import json
    import urllib.request

    req = urllib.request.Request(f"{open_hub.url}/hub/api/users",
                                 headers={"Authorization": f"token {PROBE_TOKEN}"})
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - the lab hub's own URL
        names = {u["name"] for u in json.loads(resp.read())}
    assert names <= {"alice", "bob", "carol"}, names


async def test_forged_forwarding_headers_do_not_escape_the_per_address_throttle(
        address_hub: HubProcess) -> None:
    """A password spray over many names from one machine, each attempt claiming another address
    in the headers a client can send: the proxy's own X-Forwarded-For entry still names the one
    machine, and that is the address the throttle and the log go by."""
    statuses = []
    async with session() as s:
        for i in range(7):
            forged = {"X-Real-Ip": f"203.0.113.{i + 1}", "X-Forwarded-For": f"198.51.100.{i + 1}"}
            async with s.get(f"{address_hub.url}/hub/login", headers=forged) as page:
                token = re.search(r'name="_xsrf" value="([^"]+)"', await page.text())
            assert token
            async with s.post(f"{address_hub.url}/hub/login", allow_redirects=False, headers=forged,
                              data={"username": f"nobody{i}", "password": "guess",
                                    "_xsrf": token.group(1)}) as resp:
                statuses.append(resp.status)
    assert statuses[:5] == [403] * 5
    assert statuses[5:] == [429, 429], statuses
    # hpcgate's own lines name the machine (JupyterHub's access log still repeats the header).
    ours = [line for line in address_hub.log.read_text().splitlines()
            if "Failed login" in line or "throttled" in line]
    assert len(ours) == 7 and all("from 127.0.0.1" in line for line in ours), ours


async def test_hub_keeps_answering_while_logins_stall(stalled_hub: tuple[HubProcess, StalledListener],
                                                      lab: dict[str, Any]) -> None:
    hub, stalled = stalled_hub
    async with session() as s:
        logins = [asyncio.create_task(post_login(s, hub, user, passwords(lab)[user]))
                  for user in ("alice", "bob", "carol")]
        await asyncio.sleep(0.2)  # the logins are now waiting on the directory
        latencies = []
        while not all(t.done() for t in logins):
            t0 = time.monotonic()
            async with s.get(f"{hub.url}/hub/api") as resp:
                assert resp.status == 200
                assert "version" in await resp.json()
            latencies.append(time.monotonic() - t0)
            await asyncio.sleep(0.05)
        results = [t.result() for t in logins]
    for status, page, _, took in results:
        assert (status, login_error(page)) == (503, UNAVAILABLE), hub.log_tail()
        assert took < 2.0 + 1.0, took  # receive_timeout 2 s, plus the hub's own work
    assert len(latencies) >= 10, latencies
    assert max(latencies) < 0.5, latencies
    assert stalled.accepted >= 3
    assert "no answer within 2 s" in hub.log.read_text()


def test_hub_without_crypt_key_stops_at_start_with_the_reason(lab: dict[str, Any], tmp_path: Path) -> None:
    config = hub_config(lab, [lab["ldap"]["uri"]], allow_all=True)
    with pytest.raises(LabError, match="exited") as err:
        start_hub(lab, tmp_path / "hub", config, crypt_key=False)
    assert "JUPYTERHUB_CRYPT_KEY is not set" in str(err.value)
    assert "openssl rand -hex 32" in str(err.value)
