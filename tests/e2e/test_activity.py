"""The activity history end to end on the real lab: servers in Slurm jobs record python3 and bash
executions driven over the kernel websocket through the proxy (a notebook and a console), deliver
them to the hub's store, and the Activity page, its API and its exports show them to whom the
hub allows: alice her own and, as a lead of soundscape-lab, bob's; bob nothing of alice's; carol,
an operator, everyone's. The hub stopped for 30 s while cells run (direct and reverse-tunnel
modes) loses nothing and stores nothing twice; a job cancelled with scancel mid-execution leaves
every earlier record in the store and the one in flight marked unfinished. The policy's
activity.code (none, full) decides what the store keeps of code."""

from __future__ import annotations

import csv
import hashlib
import html
import io
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import websocket

from gateway.lab.hub import LabHub
from gateway.lab.jupyter import V1, KernelClient
from gateway.lab.site import PINNED_NODES, with_changes
from tests.helpers.hub import Hub, fetch, running_hub, server_dir, user_token
from tests.helpers.lab import as_user, passwords, workdir
from tests.helpers.paths import REPO
from tests.helpers.portal import Portal

pytestmark = pytest.mark.lab

DIRECT = with_changes(PINNED_NODES, {"connection": {"mode": "direct"}})
REVERSE = with_changes(PINNED_NODES, {"connection": {"mode": "reverse", "down_timeout": 0}})
CONFIG = 'c.BatchSpawner.poll_interval = 2\n'
SPAWN = {"walltime": "15m", "cpus": "1", "memory": "1G"}
HUB_DOWN = 30.0


class HubKernel(KernelClient):
    """A kernel websocket through the hub's proxy, with a user's token, as JupyterLab holds it."""

    def __init__(self, hub: Hub, user: str, token: str, kernel_id: str):
        self.protocol = V1
        self.session = uuid.uuid4().hex
        url = (hub.hub.url.replace("http://", "ws://", 1)
               + f"/user/{user}/api/kernels/{kernel_id}/channels?session_id={self.session}")
        self.ws = websocket.create_connection(url, header=[f"Authorization: token {token}"],
                                              timeout=90, subprotocols=[V1],
                                              sockopt=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])


def new_session(hub: Hub, user: str, token: str, path: str, kind: str, kernel: str) -> str:
    body = json.dumps({"path": path, "name": path, "type": kind, "kernel": {"name": kernel}})
    status, _, out = fetch(hub, f"/user/{user}/api/sessions", token, method="POST",
                           body=body.encode(), headers={"Content-Type": "application/json"},
                           timeout=90)
    assert status == 201, out[:300]
    return json.loads(out)["kernel"]["id"]


def api_records(hub: Hub, token: str, user: str, since: str = "1d") -> tuple[int, Any]:
    status, _, body = fetch(hub, f"/hub/api/hpcgate/activity?user={user}&since={since}", token,
                            timeout=30)
    return status, json.loads(body) if status == 200 else body


def wait_in_store(hub: Hub, token: str, user: str, pred: Any, timeout: float = 90) -> list[dict]:
    """The user's stored records once `pred(records)` holds."""
    deadline = time.monotonic() + timeout
    while True:
        status, doc = api_records(hub, token, user)
        records = doc["records"] if status == 200 else []
        if status == 200 and pred(records):
            return records
        assert time.monotonic() < deadline, f"not in the store after {timeout} s ({status}): " \
                                            f"{[r['kind'] for r in records]}"
        time.sleep(1)


def by_msg(records: list[dict], msg_id: str) -> dict:
    found = [r for r in records if r["kind"] == "execution" and r["msg_id"] == msg_id]
    assert len(found) == 1, f"{len(found)} records of {msg_id}"
    return found[0]


def buffer_records(hub: Hub, user: str, job_id: str) -> list[dict]:
    """The records one job of the user wrote in its buffer (the user's file, read as root)."""
    path = server_dir(hub.lab, user) / "activity.jsonl"
    return [rec for rec in map(json.loads, filter(str.strip, path.read_text().splitlines()))
            if rec["job_id"] == job_id]


def stored_records(hub: Hub) -> list[dict]:
    """Every row of the hub's own store file (read-only, as an admin would), even with the hub
    down."""
    db = sqlite3.connect(f"file:{hub.hub.dir / 'hpcgate-activity.sqlite'}?mode=ro", uri=True)
    try:
        return [json.loads(r[0]) for r in db.execute("SELECT record FROM records").fetchall()]
    finally:
        db.close()


def start(hub: Hub, user: str, partition: str) -> None:
    status, body = hub.spawn(user, {**SPAWN, "partition": partition})
    assert status in (201, 202), body
    hub.wait_ready(user, timeout=180)


class ActivityHub(Hub):
    portals: dict[str, Portal]
    """Each user's browser session (the hub's pages take cookies, not tokens)."""


@pytest.fixture(scope="module")
def direct_hub(lab: dict) -> Iterator[ActivityHub]:
    # Logged in through the lab's directory, as people use the portal: their groups come from
    # it, and carol (hub-admins) gets the hub-operator role, which may read everyone's activity.
    with running_hub(lab, "activity", hub_class=ActivityHub, policy=DIRECT, extra_config=CONFIG,
                     ldap_login=True) as h:
        h.portals = {}
        for user in ("alice", "bob", "carol"):
            portal = Portal(h.hub.url)
            status, url, body = portal.login(user, passwords(lab)[user])
            assert status == 200 and "/hub/login" not in url, Portal.login_error(body)
            h.portals[user] = portal
        start(h, "alice", "debug")
        yield h


@pytest.fixture(scope="module")
def tokens(direct_hub: Hub) -> dict[str, str]:
    return {u: user_token(direct_hub, u) for u in ("alice", "bob", "carol")}


@pytest.fixture(scope="module")
def alice_cells(direct_hub: Hub, tokens: dict[str, str]) -> dict[str, Any]:
    """alice runs python3 cells in a notebook and bash in a console, over the websocket."""
    hub, token = direct_hub, tokens["alice"]
    py = HubKernel(hub, "alice", token, new_session(hub, "alice", token, "study.ipynb",
                                                    "notebook", "python3"))
    ok = py.execute("print('hello from python')", cell_id="cell-ok")
    err = py.execute("1/0", cell_id="cell-err")
    py.close()
    sh = HubKernel(hub, "alice", token, new_session(hub, "alice", token, "console-1", "console",
                                                    "bash"))
    bash = sh.execute("echo hello from bash")
    sh.close()
    return {"ok": ok, "err": err, "bash": bash}


def test_executions_in_two_languages_reach_the_store_in_order(
        direct_hub: Hub, tokens: dict[str, str], alice_cells: dict[str, Any]) -> None:
    ids = set(alice_cells.values())
    records = wait_in_store(direct_hub, tokens["alice"], "alice",
                            lambda rs: ids <= {r.get("msg_id") for r in rs})
    ok, err, bash = (by_msg(records, alice_cells[k]) for k in ("ok", "err", "bash"))
    assert (ok["language"], ok["kernel_name"], ok["outcome"], ok["cell_id"]) == \
        ("python", "python3", "ok", "cell-ok")
    assert ok["session_path"] == "study.ipynb" and ok["node"] == "c1" and ok["job_id"]
    assert (err["outcome"], err["ename"]) == ("error", "ZeroDivisionError")
    assert (bash["language"], bash["kernel_name"], bash["session_path"]) == \
        ("bash", "bash", "console-1")
    for rec in (ok, err, bash):
        assert rec["requested"] <= rec["started"] <= rec["ended"], rec
    assert ok["ended"] <= err["requested"] and err["ended"] <= bash["requested"]
    assert ok["code"]["kept"] == "hash" and "text" not in ok["code"]
    assert {"server_start", "kernel_start"} <= {r["kind"] for r in records}


def test_a_large_download_through_the_proxy_reaches_the_store(
        direct_hub: Hub, tokens: dict[str, str], alice_cells: dict[str, Any]) -> None:
    made = as_user(direct_hub.lab, "alice",
                   ["truncate", "-s", "20M", str(workdir(direct_hub.lab, "alice") / "take 3.flac")])
    assert made.returncode == 0, made.stderr
    status, headers, body = fetch(direct_hub, "/user/alice/files/take%203.flac", tokens["alice"],
                                  timeout=60)
    assert status == 200 and len(body) == 20 << 20 and headers["Content-Type"] == "audio/flac"
    status, _, _ = fetch(direct_hub, "/user/alice/files/take%203.flac", tokens["alice"],
                         headers={"Range": "bytes=0-1023"})  # a small range: not a download
    assert status == 206
    records = wait_in_store(direct_hub, tokens["alice"], "alice", lambda rs: any(
        r["kind"] == "download" for r in rs))
    [rec] = [r for r in records if r["kind"] == "download"]
    assert (rec["path"], rec["bytes"], rec["range_start"], rec["file_bytes"]) == \
        ("take 3.flac", 20 << 20, 0, 20 << 20)
    assert rec["node"] == "c1" and rec["job_id"]


def test_alice_sees_her_timeline_and_downloads_it(
        direct_hub: ActivityHub, tokens: dict[str, str], alice_cells: dict[str, Any]) -> None:
    status, url, page = direct_hub.portals["alice"].request("/hub/activity")
    assert status == 200 and url.endswith("/hub/activity"), (url, page[:500])
    assert "Activity of alice" in page and 'id="activity-chart"' in page
    assert page.count('class="bar"') >= 1 and 'class="error-mark"' in page
    assert "study.ipynb" in page and "console-1" in page and "ZeroDivisionError" in page
    assert "keeps activity records for 180 days" in page
    link = page[page.index('id="download-csv" href="') + 24:]
    link = html.unescape(link[:link.index('"')])
    assert link.startswith("/hub/activity/export?") and "format=csv" in link
    status, _, body = direct_hub.portals["alice"].request(link)
    assert status == 200, body[:300]
    rows = list(csv.DictReader(io.StringIO(body)))
    assert {r["user"] for r in rows} == {"alice"}
    assert set(alice_cells.values()) <= {r["msg_id"] for r in rows}


def test_a_lead_sees_the_groups_members_and_no_one_else(
        direct_hub: ActivityHub, tokens: dict[str, str], alice_cells: dict[str, Any]) -> None:
    hub = direct_hub
    for user in ("bob", "carol"):  # their servers' start records reach the store
        start(hub, user, "debug")
        hub.stop(user)
    for user in ("bob", "carol"):
        wait_in_store(hub, tokens[user], user,
                      lambda rs: {"server_start", "server_stop"} <= {r["kind"] for r in rs})
    alice = tokens["alice"]
    status, doc = api_records(hub, alice, "bob")
    assert status == 200 and doc["records"] and {r["user"] for r in doc["records"]} == {"bob"}
    assert api_records(hub, alice, "carol")[0] == 403
    lead = hub.portals["alice"]
    status, _, page = lead.request("/hub/activity?group=soundscape-lab&since=1d")
    assert status == 200 and "Activity of group soundscape-lab" in page, page[:300]
    members = page[page.index('id="activity-members"'):page.index('id="activity-sessions"')]
    assert ">alice</a>" in members and ">bob</a>" not in members  # bob ran no cell...
    assert "carol" not in page
    status, _, body = lead.request("/hub/activity/export?group=soundscape-lab&format=jsonl&since=1d")
    users = {json.loads(line)["user"] for line in body.splitlines()}
    assert status == 200 and users == {"alice", "bob"}  # ...but his records are there
    assert lead.request("/hub/activity?group=hub-admins")[0] == 403
    assert lead.request("/hub/activity?user=carol")[0] == 403
    assert lead.request("/hub/activity?user=bob&since=1d")[0] == 200
    # carol, an operator, sees anyone's.
    status, doc = api_records(hub, tokens["carol"], "alice")
    assert status == 200 and set(alice_cells.values()) <= {r.get("msg_id") for r in doc["records"]}


def test_bob_gets_nothing_of_alices(direct_hub: ActivityHub, tokens: dict[str, str],
                                    alice_cells: dict[str, Any]) -> None:
    hub, bob, portal = direct_hub, tokens["bob"], direct_hub.portals["bob"]
    for path in ("/hub/activity?user=alice", "/hub/activity?group=soundscape-lab",
                 "/hub/activity/export?user=alice&format=csv",
                 "/hub/activity/export?group=soundscape-lab&format=jsonl",
                 "/hub/activity?user=nobody-here"):
        status, _, page = portal.request(path)
        assert status == 403, (path, status)
        assert "study.ipynb" not in page and alice_cells["ok"] not in page
    status, _, body = fetch(hub, "/hub/api/hpcgate/activity?user=alice", bob, timeout=30)
    assert status == 403 and b"study.ipynb" not in body
    status, _, page = portal.request("/hub/activity?since=1d")
    assert status == 200 and "Activity of bob" in page and "study.ipynb" not in page
    status, doc = api_records(hub, bob, "")  # no user: his own
    assert status == 200 and {r["user"] for r in doc["records"]} == {"bob"}
    # The store's file is the hub's alone: bob cannot read it on the host, nor export from it.
    db = hub.hub.dir / "hpcgate-activity.sqlite"
    assert db.stat().st_mode & 0o777 == 0o600
    out = as_user(hub.lab, "bob", [sys.executable, "-m", "gateway.cli", "activity", "export",
                                   "--user", "alice", "--format", "csv", "--db", str(db)])
    assert out.returncode != 0 and "study.ipynb" not in out.stdout
    # An admin on the hub host can.
    admin = subprocess.run([sys.executable, "-m", "gateway.cli", "activity", "export", "--user",
                            "alice", "--format", "jsonl", "--db", str(db)], capture_output=True,
                           text=True, timeout=60, cwd=REPO)
    assert admin.returncode == 0, admin.stderr
    assert set(alice_cells.values()) <= {json.loads(x).get("msg_id") for x in admin.stdout.split("\n")
                                         if x}


def hub_down_while_cells_run(hub: Hub, user: str, policy: dict) -> None:
    """Kill the hub, run cells over an open websocket for HUB_DOWN s, start a new hub on the
    same state; every record arrives, once."""
    token = user_token(hub, user)
    [job] = hub.active_jobs(user)
    job_id = str(job["job_id"])
    kernel = HubKernel(hub, user, token, new_session(hub, user, token, "outage.ipynb", "notebook",
                                                     "python3"))
    before = kernel.execute("x = 0")
    wait_in_store(hub, token, user, lambda rs: before in {r.get("msg_id") for r in rs})
    old = hub.hub
    old.kill()
    down, during = time.monotonic(), []
    while time.monotonic() - down < HUB_DOWN:
        during.append(kernel.execute("x += 1; print(x)"))
        time.sleep(3)
    assert len(during) >= 8
    written = {r.get("msg_id") for r in buffer_records(hub, user, job_id)}
    assert set(during) <= written  # in the job's buffer...
    assert not set(during) & {r.get("msg_id") for r in stored_records(hub)}  # ...not in the store
    hub.hub = LabHub(old.info, old.dir, policy=policy, extra_config=CONFIG,
                     ldap_login=old.ldap_login)
    hub.hub.start()
    token = user_token(hub, user)
    records = wait_in_store(hub, token, user,
                            lambda rs: set(during) <= {r.get("msg_id") for r in rs}, timeout=120)
    kernel.close()
    for msg_id in during:
        assert by_msg(records, msg_id)["outcome"] == "ok"
    mine = [r["id"] for r in stored_records(hub) if r["job_id"] == job_id]
    assert len(mine) == len(set(mine))
    # Everything the job wrote up to the last cell is stored (a kernel event after it may be
    # on its way).
    buffered = [r["id"] for r in buffer_records(hub, user, job_id)]
    last = max(i for i, r in enumerate(buffer_records(hub, user, job_id))
               if r.get("msg_id") == during[-1])
    assert set(buffered[:last + 1]) <= set(mine)


def test_the_hub_down_for_30s_loses_and_duplicates_nothing(direct_hub: Hub,
                                                           alice_cells: dict[str, Any]) -> None:
    hub_down_while_cells_run(direct_hub, "alice", DIRECT)


def test_scancel_mid_execution_keeps_every_record_and_marks_the_one_in_flight(
        direct_hub: Hub) -> None:
    hub = direct_hub
    token = user_token(hub, "alice")
    kernel = HubKernel(hub, "alice", token, new_session(hub, "alice", token, "cancelled.ipynb",
                                                        "notebook", "python3"))
    done = kernel.execute("import time; print('before')")
    running = kernel.execute("time.sleep(300)", wait=False)
    kernel.wait(running, "busy")
    wait_in_store(hub, token, "alice", lambda rs: done in {r.get("msg_id") for r in rs})
    [job] = hub.active_jobs("alice")
    subprocess.run(["scancel", str(job["job_id"])], env={**os.environ, **hub.lab["slurm"]["env"]},
                   check=True, timeout=30)
    records = wait_in_store(hub, token, "alice",
                            lambda rs: running in {r.get("msg_id") for r in rs}, timeout=60)
    cut = by_msg(records, running)
    assert cut["outcome"] == "unfinished" and cut["ended"] is None, cut
    assert by_msg(records, done)["outcome"] == "ok"
    stored = {r["id"] for r in wait_in_store(hub, token, "alice", lambda rs: any(
        r["kind"] == "server_stop" and r["job_id"] == str(job["job_id"]) for r in rs))}
    # Every record the job wrote, up to its server's stop, is in the hub's store.
    assert {r["id"] for r in buffer_records(hub, "alice", str(job["job_id"]))} <= stored
    kernel.close()


@pytest.fixture(scope="module")
def reverse_hub(lab: dict, direct_hub: Hub) -> Iterator[Hub]:
    # After the direct hub's tests (its module fixture is torn down at the module's end, so
    # ask for it first: the two hubs never run alice's servers at once).
    with running_hub(lab, "activity-reverse", ("alice",), policy=REVERSE,
                     extra_config=CONFIG) as h:
        start(h, "alice", "long")  # on c2, behind its reverse tunnel
        yield h


def test_the_hub_down_for_30s_in_reverse_tunnel_mode(reverse_hub: Hub) -> None:
    [job] = reverse_hub.active_jobs("alice")
    assert job["batch_host"] == "c2"
    hub_down_while_cells_run(reverse_hub, "alice", REVERSE)


CELL = "total = 0\nfor i in range(3):\n    total += i\nprint(total)"


@pytest.mark.parametrize("code", ["none", "full"])
def test_the_policy_decides_what_is_kept_of_code(lab: dict, reverse_hub: Hub, code: str) -> None:
    # From the policy file through the spawner, the job's launcher and the recorder to the
    # store (`hash`, the default, is checked above). bob: alice's server runs on reverse_hub.
    policy = with_changes(DIRECT, {"activity": {"code": code}})
    with running_hub(lab, f"activity-{code}", ("bob",), policy=policy, extra_config=CONFIG) as hub:
        start(hub, "bob", "debug")
        token = user_token(hub, "bob")
        kernel = HubKernel(hub, "bob", token, new_session(hub, "bob", token, f"{code}.ipynb",
                                                          "notebook", "python3"))
        msg_id = kernel.execute(CELL, cell_id="c1")
        kernel.close()
        kept = by_msg(wait_in_store(hub, token, "bob", lambda rs: msg_id in {
            r.get("msg_id") for r in rs}), msg_id)["code"]
    if code == "none":
        assert kept == {"kept": "none"}
    else:
        assert kept == {"kept": "full", "text": CELL, "lines": 4,
                        "sha256": hashlib.sha256(CELL.encode()).hexdigest()}
