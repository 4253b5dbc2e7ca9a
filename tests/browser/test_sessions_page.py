"""The researcher's portal in a real browser (Chromium through Playwright) on the real lab: the
sessions page and its cards, the form that keeps what was typed, the queue told in words, the
operator view, walltime warnings and the clean end at the time limit.

One hub for the module (LDAP login, the lab's policy with a 2-minute warning threshold); each
test logs in through the login page. Screenshots go to $HPCGATE_SCREENSHOTS.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers.browser import chromium, login, shot
from tests.helpers.hub import Hub, fetch, job_log, running_hub, user_token
from tests.helpers.lab import passwords as lab_passwords

pytestmark = pytest.mark.lab

POLICY = {"job": {"walltime_warnings": ["2m"], "end_signal": 30}}


@pytest.fixture(scope="module")
def hub(lab: dict) -> Iterator[Hub]:
    with running_hub(lab, "browser", ldap_login=True, policy=POLICY) as h:
        yield h


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def passwords(lab: dict) -> dict[str, str]:
    return lab_passwords(lab)


def as_user(browser: Any, hub: Hub, passwords: dict[str, str], user: str) -> Any:
    return login(browser, hub.hub.url, user, passwords[user])


def spawn_from_form(page: Any, hub: Hub, server: str = "", user: str = "alice", **fields: str) -> None:
    """Fill the spawn form (partition, cpus, memory, walltime) and submit it."""
    path = "/hub/spawn" + (f"/{user}/{server}" if server else "")
    page.goto(hub.hub.url + path)
    if "partition" in fields:
        page.select_option("#hpcgate-partition", fields.pop("partition"))
    for name, value in fields.items():
        page.fill(f"#hpcgate-{name}", value)
    page.click("form input[type=submit], form button[type=submit]")


def card(page: Any, server: str = "") -> Any:
    return page.locator(f"#hpcgate-card-{server or 'default'}")


def wait_state(page: Any, hub: Hub, server: str, states: tuple[str, ...], timeout: float = 120) -> str:
    page.goto(hub.hub.url + "/hub/home")
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        state = card(page, server).get_attribute("data-state", timeout=30_000)
        if state in states:
            return state
        page.wait_for_timeout(500)
    raise AssertionError(f"the card of {server or 'default'} stayed {state!r}, not {states}")


def stop_all(hub: Hub, user: str) -> None:
    for name in (hub.api("GET", f"/users/{user}")[1].get("servers") or {}):
        hub.stop_quietly(user, name)


def scontrol_job(hub: Hub, job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "--oneliner", job_id], capture_output=True,
                         text=True, env={**__import__("os").environ, **hub.lab["slurm"]["env"]},
                         check=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


@contextlib.contextmanager
def drained(hub: Hub, reason: str) -> Iterator[None]:
    env = {**__import__("os").environ, **hub.lab["slurm"]["env"]}
    subprocess.run(["scontrol", "update", "nodename=c1,c2", "state=drain", f"reason={reason}"],
                   env=env, check=True)
    try:
        yield
    finally:
        subprocess.run(["scontrol", "update", "nodename=c1,c2", "state=resume"], env=env,
                       check=False)


def test_alice_spawns_and_her_card_shows_the_job(hub: Hub, browser: Any,
                                                 passwords: dict[str, str]) -> None:
    page = as_user(browser, hub, passwords, "alice")
    spawn_from_form(page, hub, partition="debug", walltime="20m", cpus="2")
    assert wait_state(page, hub, "", ("running",)) == "running"
    [job] = hub.active_jobs("alice")
    c = card(page)
    assert c.locator(".hpcgate-job").text_content() == str(job["job_id"])
    assert c.locator(".hpcgate-node").text_content() == job["nodes"]
    assert "Running on " + job["nodes"] in c.locator(".hpcgate-state-text").text_content()
    assert c.locator(".hpcgate-where").text_content().startswith("debug")
    assert c.locator(".hpcgate-size").text_content().startswith("2 cores")
    left = c.locator(".hpcgate-left").text_content()
    assert re.match(r"1\d minutes", left), left  # from the scheduler's end time: under 20 min
    shot(page, "sessions-running")
    # The job log: the launcher's own lines, read as alice.
    c.locator(".hpcgate-log-toggle").click()
    page.wait_for_function("document.querySelector('#hpcgate-card-default .hpcgate-log')"
                           ".textContent.includes('hpcgate: JupyterLab for alice')")
    # Open leads into her JupyterLab, which shows the time left (the hpcgate-session extension).
    with page.expect_navigation():
        c.locator(".hpcgate-open").click()
    page.wait_for_url("**/user/alice/lab**")
    indicator = page.locator("#hpcgate-time-left")
    page.wait_for_function("(document.getElementById('hpcgate-time-left') || {}).textContent"
                           "?.startsWith('Time left: ')", timeout=60_000)
    assert re.match(r"Time left: 1\d minutes", indicator.text_content()), indicator.text_content()
    shot(page, "jupyterlab-time-left")


def test_keyboard_reaches_every_control(hub: Hub, browser: Any, passwords: dict[str, str]) -> None:
    page = as_user(browser, hub, passwords, "alice")
    page.goto(hub.hub.url + "/hub/home")
    card(page).locator(".hpcgate-stop").wait_for()
    wanted = page.evaluate("""() => Array.from(document.querySelectorAll(
        '#hpcgate-sessions a, #hpcgate-sessions button, #hpcgate-sessions input, nav a'))
        .filter(e => e.offsetParent !== null).map(e => e.id || e.className + ':' + e.textContent.trim())""")
    reached = set()
    for _ in range(len(wanted) * 2 + 10):
        page.keyboard.press("Tab")
        reached.add(page.evaluate("() => { const e = document.activeElement; "
                                  "return e.id || e.className + ':' + e.textContent.trim(); }"))
    missing = [w for w in wanted if w not in reached]
    assert not missing, missing
    # Every control has a name a screen reader can say.
    unnamed = page.evaluate("""() => Array.from(document.querySelectorAll(
        '#hpcgate-sessions button, #hpcgate-sessions a, #hpcgate-sessions input'))
        .filter(e => e.offsetParent !== null && !(e.textContent.trim() || e.getAttribute('aria-label')
        || (e.id && document.querySelector('label[for="' + e.id + '"]')))).map(e => e.outerHTML)""")
    assert not unnamed, unnamed
    # JupyterHub's dark theme: the cards follow it (Bootstrap's theme colours, nothing fixed).
    def text_lightness() -> float:
        rgb = page.evaluate("getComputedStyle(document.querySelector('#hpcgate-card-default "
                            ".hpcgate-state-text')).color")
        r, g, b = (int(v) for v in re.findall(r"\d+", rgb)[:3])
        return (r + g + b) / 765

    light = text_lightness()
    page.click("#dark-theme-toggle")
    page.wait_for_function("document.documentElement.dataset.bsTheme === 'dark'")
    assert light < 0.5 < text_lightness()
    shot(page, "sessions-dark")
    page.click("#dark-theme-toggle")


def test_bob_cannot_see_alices_sessions_or_log(hub: Hub) -> None:
    bob = user_token(hub, "bob")
    for path in ("/hub/api/hpcgate/sessions/alice", "/hub/api/hpcgate/sessions/alice/log"):
        status, _, _ = fetch(hub, path, bob)
        assert status in (403, 404), (path, status)
    status, _, body = fetch(hub, "/hub/api/hpcgate/sessions", bob)
    assert status == 200 and json.loads(body)["user"] == "bob"
    assert fetch(hub, "/hub/api/hpcgate/sessions?all=1", bob)[0] == 403
    alice = user_token(hub, "alice")
    status, _, body = fetch(hub, "/hub/api/hpcgate/sessions/alice/log", alice)
    assert status == 200 and "hpcgate: JupyterLab for alice" in json.loads(body)["log"]


def test_operator_sees_everyones_sessions_but_cannot_open_them(hub: Hub, browser: Any,
                                                              passwords: dict[str, str]) -> None:
    assert hub.spawn("bob", {"partition": "debug", "walltime": "0:10:00"})[0] in (201, 202)
    hub.wait_ready("bob")
    try:
        page = as_user(browser, hub, passwords, "carol")
        page.goto(hub.hub.url + "/hub/sessions/all")
        page.wait_for_selector("#hpcgate-operator tbody tr[data-user=alice]")
        page.wait_for_selector("#hpcgate-operator tbody tr[data-user=bob]")
        page.fill("#hpcgate-filter", "bob")
        assert page.locator("#hpcgate-operator tbody tr[data-user=alice]").count() == 0
        shot(page, "operator-view")
        resp = page.goto(hub.hub.url + "/user/alice/lab")
        assert resp is not None and resp.status in (403, 404)
        # alice has no operator view.
        alice = as_user(browser, hub, passwords, "alice")
        resp = alice.goto(hub.hub.url + "/hub/sessions/all")
        assert resp is not None and resp.status == 403
    finally:
        hub.stop_quietly("bob")


def test_refused_form_keeps_what_was_typed(hub: Hub, browser: Any, passwords: dict[str, str]) -> None:
    page = as_user(browser, hub, passwords, "alice")
    spawn_from_form(page, hub, server="refused", partition="long", cpus="3", walltime="13:00:00")
    page.wait_for_selector("#hpcgate-walltime-error")
    assert page.input_value("#hpcgate-walltime") == "13:00:00"
    assert page.input_value("#hpcgate-cpus") == "3"
    assert page.input_value("#hpcgate-partition") == "long"
    error = page.locator("#hpcgate-walltime-error").text_content()
    # alice (soundscape-lab) may use long for 12 hours.
    assert "at most 12 hours" in error and "13 hours" in error, error
    html = page.content()
    assert "SpawnException" not in html and "Error: 400" not in html
    shot(page, "form-refused")
    # The browser checks the limits as the user types: 99 cores is out of range.
    page.fill("#hpcgate-cpus", "99")
    assert page.evaluate("document.getElementById('hpcgate-cpus').checkValidity()") is False


def test_second_named_session_and_a_third_is_refused(hub: Hub, browser: Any,
                                                     passwords: dict[str, str]) -> None:
    page = as_user(browser, hub, passwords, "alice")
    page.goto(hub.hub.url + "/hub/home")
    page.fill("#hpcgate-new-name", "second")
    page.click("#hpcgate-new-session button[type=submit]")
    page.wait_for_url("**/hub/spawn/alice/second")
    page.fill("#hpcgate-walltime", "15m")
    page.click("form input[type=submit], form button[type=submit]")
    assert wait_state(page, hub, "second", ("running",)) == "running"
    assert card(page, "").get_attribute("data-state") == "running"
    spawn_from_form(page, hub, server="third", partition="debug", walltime="10m")
    page.wait_for_selector("#hpcgate-form-error")
    assert "at most 2" in page.locator("#hpcgate-form-error").text_content()
    assert len(hub.active_jobs("alice")) == 2
    hub.stop_quietly("alice", "second")


def test_relaunch_with_the_same_settings_and_edit(hub: Hub, browser: Any,
                                                  passwords: dict[str, str]) -> None:
    [before] = [j for j in hub.active_jobs("alice") if j["name"] == "hpcgate-alice"]
    was = scontrol_job(hub, str(before["job_id"]))
    page = as_user(browser, hub, passwords, "alice")
    page.goto(hub.hub.url + "/hub/home")
    card(page).locator(".hpcgate-stop").click()
    wait_state(page, hub, "", ("stopped", "ended"))
    page.wait_for_selector("#hpcgate-history tbody td:has-text('Stopped from the portal.')")
    card(page).locator(".hpcgate-relaunch").click()
    # To the progress page, which moves on to JupyterLab once it is up.
    page.wait_for_url(lambda url: "/spawn-pending/alice" in url or "/user/alice/" in url)
    assert wait_state(page, hub, "", ("running",)) == "running"
    [after] = [j for j in hub.active_jobs("alice") if j["name"] == "hpcgate-alice"]
    assert after["job_id"] != before["job_id"]
    now = scontrol_job(hub, str(after["job_id"]))
    for key in ("Partition", "NumCPUs", "MinMemoryNode", "TimeLimit"):
        assert now[key] == was[key], key
    hub.stop("alice")
    page.goto(hub.hub.url + "/hub/home")
    card(page).locator(".hpcgate-edit").click()
    page.wait_for_url("**/hub/spawn**")
    assert page.input_value("#hpcgate-partition") == "debug"
    assert page.input_value("#hpcgate-walltime") == "20m"
    assert page.input_value("#hpcgate-cpus") == "2"


def test_drained_partition_is_told_in_words_and_stop_while_queued_cancels(
        hub: Hub, browser: Any, passwords: dict[str, str]) -> None:
    stop_all(hub, "alice")
    page = as_user(browser, hub, passwords, "alice")
    with drained(hub, "maintenance test"):
        spawn_from_form(page, hub, partition="debug", walltime="10m")
        expected = "All nodes of partition debug are drained: maintenance test"
        page.wait_for_function(  # the progress page's message
            f"(document.getElementById('progress-message') || {{}}).textContent"
            f"?.includes({json.dumps(expected)})", timeout=60_000)
        assert wait_state(page, hub, "", ("queued",)) == "queued"
        text = card(page).locator(".hpcgate-state-text")
        page.wait_for_function(f"document.querySelector('#hpcgate-card-default .hpcgate-state-text')"
                               f".textContent.includes({json.dumps(expected)})")
        assert text.text_content().startswith("Queued")
        shot(page, "sessions-queued-drained")
        assert len(hub.active_jobs("alice")) == 1
        card(page).locator(".hpcgate-stop").click()
        deadline = time.monotonic() + 60
        while hub.active_jobs("alice") and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not hub.active_jobs("alice")
    orphans = subprocess.run([sys.executable, "-m", "gateway.cli", "jobs", "orphans", "--config",
                              str(hub.hub.config)], capture_output=True, text=True, timeout=60)
    assert orphans.returncode == 0, orphans.stdout + orphans.stderr


def test_stop_on_the_sessions_page_after_a_hub_restart_cancels_the_queued_job(
        hub: Hub, browser: Any, passwords: dict[str, str]) -> None:
    """alice's job waits (nodes drained) while the hub is SIGKILLed and started again: her card
    still says queued, its Stop answers at once ("Stop requested.", not the hub's 500 "pending
    check"), the job is cancelled and the session ended "Stopped from the portal."."""
    stop_all(hub, "alice")
    page = as_user(browser, hub, passwords, "alice")
    with drained(hub, "maintenance test"):
        spawn_from_form(page, hub, partition="debug", walltime="10m")
        assert wait_state(page, hub, "", ("queued",)) == "queued"
        [job] = hub.active_jobs("alice")
        hub.hub.kill()
        hub.hub.start()
        assert wait_state(page, hub, "", ("queued",)) == "queued"  # same login: cookies kept
        card(page).locator(".hpcgate-stop").click()
        page.wait_for_function("document.getElementById('hpcgate-sessions-status').textContent"
                               " === 'Stop requested.'", timeout=30_000)
        assert wait_state(page, hub, "", ("stopped",), timeout=30) == "stopped"
        shot(page, "sessions-stopped-after-restart")
        deadline = time.monotonic() + 30
        while hub.active_jobs("alice") and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not hub.active_jobs("alice")
        assert scontrol_job(hub, str(job["job_id"]))["JobState"] == "CANCELLED"
    _, mine = hub.api("GET", "/hpcgate/sessions/alice")
    [default] = [c for c in mine["sessions"] if c["name"] == ""]
    assert default["history"][0]["job_id"] == str(job["job_id"])
    assert default["history"][0]["end_text"] == "Stopped from the portal."


def test_walltime_warning_then_a_clean_end_at_the_time_limit(hub: Hub, browser: Any,
                                                             passwords: dict[str, str]) -> None:
    stop_all(hub, "alice")
    page = as_user(browser, hub, passwords, "alice")
    spawn_from_form(page, hub, partition="debug", walltime="3m")
    wait_state(page, hub, "", ("running",))
    lab = page.context.new_page()  # her JupyterLab, open next to the hub's pages
    lab.goto(hub.hub.url + "/user/alice/lab")
    lab.locator("#hpcgate-time-left").wait_for(timeout=60_000)
    # 2 minutes before the limit: the card and the banner of every hub page warn.
    banner = page.locator("#hpcgate-walltime-banner")
    banner.wait_for(state="visible", timeout=120_000)
    assert "left before the walltime" in banner.text_content()
    assert card(page).locator(".hpcgate-warning").is_visible()
    page.goto(hub.hub.url + "/hub/token")  # any hub page
    page.locator("#hpcgate-walltime-banner").wait_for(state="visible", timeout=40_000)
    shot(page, "walltime-banner")
    # Inside JupyterLab: a notification at the threshold.
    lab.get_by_text("left before the walltime ends this session").first.wait_for(timeout=30_000)
    shot(lab, "jupyterlab-walltime-warning")
    # Slurm signals the job 30 s (up to 60 s more) before the limit; it ends cleanly as "time limit",
    # and the open JupyterLab says so and offers a relaunch (not "server unavailable").
    lab.get_by_text("Session reached its time limit", exact=True).wait_for(timeout=200_000)
    assert lab.get_by_role("button", name="Relaunch").is_visible()
    shot(lab, "jupyterlab-time-limit")
    page.goto(hub.hub.url + "/hub/home")
    doc: dict = {}
    deadline = time.monotonic() + 200
    while time.monotonic() < deadline:
        doc = page.evaluate("fetch(jhdata.base_url + 'api/hpcgate/sessions', {headers: "
                            "{'X-XSRFToken': jhdata.xsrf_token}}).then(r => r.json())")
        ended = [h for s in doc.get("sessions", []) for h in s.get("history", [])]
        if any(h["end_kind"] == "time-limit" for h in ended):
            break
        page.wait_for_timeout(2000)
    else:  # say what the hub said instead, and what the server's job printed last
        tail = job_log(hub.lab, "alice")[-1500:]
        raise AssertionError(f"no time-limit end in the sessions API: {doc}\njob log: {tail}")
    page.wait_for_selector("#hpcgate-history tbody td:has-text('Reached its time limit.')",
                           timeout=30_000)
    assert not hub.active_jobs("alice")
    # It was the launcher that ended it, on the scheduler's signal, not the scheduler's kill.
    text = job_log(hub.lab, "alice")
    assert "hpcgate: the walltime is near: stopping JupyterLab and its kernels" in text
    assert "DUE TO TIME LIMIT" not in text
