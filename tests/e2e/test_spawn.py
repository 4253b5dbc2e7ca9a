"""Spawning through the real hub and proxy onto the lab's real Slurm, the hub's database on the
lab's PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy

from gateway.lab import postgres
from gateway.lab.hub import database_name
from gateway.lab.site import PINNED_NODES, with_changes
from tests.helpers.hub import Hub, fetch, running_hub, server_dir, user_token

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def hub(lab: dict) -> Iterator[Hub]:
    # configurable-http-proxy stays supported: this suite runs on it, the others on nginx. So does
    # SQLite: the other suites keep it, this one runs on PostgreSQL (restarts, orphans included).
    with running_hub(lab, "test", ("alice", "bob", "carol"), proxy="chp", database="postgresql",
                     policy=with_changes(PINNED_NODES, {"connection": {"mode": "direct"}})) as h:
        yield h


def test_alice_spawns_on_c1_reachable_through_proxy_and_stop_cancels(hub: Hub) -> None:
    status, _ = hub.spawn("alice")
    assert status in (201, 202), _
    hub.wait_ready("alice")
    code, body = hub.get("/user/alice/api")
    assert code == 200 and "version" in json.loads(body)
    jobs = hub.active_jobs("alice")
    assert len(jobs) == 1, [(j["job_id"], j["job_state"], j["name"]) for j in jobs]
    job = jobs[0]
    assert job["job_state"] == "RUNNING" and job["batch_host"] == "c1"
    # The server process itself runs as alice (this lab's: its launch file is in the lab's home).
    ps = subprocess.run(["pgrep", "-u", "alice", "-f",
                         f"gateway.job.launcher {server_dir(hub.lab, 'alice')}/"],
                        capture_output=True, text=True)
    assert ps.returncode == 0 and ps.stdout.split()
    # The token is in no argv and not in the environment Slurm keeps for the job.
    for pid in ps.stdout.split():
        assert "JUPYTERHUB_API_TOKEN" not in Path(f"/proc/{pid}/cmdline").read_text()
    env = subprocess.run(["scontrol", "show", "job", "-d", str(job["job_id"])],
                         env={**os.environ, **hub.lab["slurm"]["env"]}, capture_output=True,
                         text=True).stdout
    assert "TOKEN" not in env
    script = subprocess.run(["scontrol", "write", "batch_script", str(job["job_id"]), "-"],
                            env={**os.environ, **hub.lab["slurm"]["env"]}, capture_output=True,
                            text=True).stdout
    assert "gateway.job.launcher" in script and "TOKEN" not in script

    hub.stop("alice")
    final = hub.job(job["job_id"])
    assert final["job_state"] == "CANCELLED"
    assert not hub.active_jobs("alice")


def test_spawn_on_c2_direct_to_its_address(hub: Hub) -> None:
    status, _ = hub.spawn("bob", {"partition": "long"})
    assert status in (201, 202), _
    hub.wait_ready("bob")
    code, _ = hub.get("/user/bob/api")
    assert code == 200
    [job] = hub.active_jobs("bob")
    assert job["batch_host"] == "c2"
    server = hub.server("bob")
    # The proxy routes to c2's own address: no tunnel, and the launcher reached the hub API.
    _, routes = hub.api("GET", "/proxy")
    [target] = [r["target"] for spec, r in routes.items() if spec.endswith("/user/bob/")]
    assert target.startswith(f"http://{hub.lab['nodes']['c2']['address']}:"), (target, server)
    hub.stop("bob")


def test_a_job_cancelled_outside_the_portal_ends_the_server_within_five_seconds(hub: Hub) -> None:
    status, _ = hub.spawn("carol", {"partition": "debug"})
    assert status in (201, 202), _
    hub.wait_ready("carol")
    [job] = hub.active_jobs("carol")
    subprocess.run(["scancel", str(job["job_id"])], env={**os.environ, **hub.lab["slurm"]["env"]},
                   check=True)
    cancelled_at = time.monotonic()
    while hub.server("carol") is not None:
        # JupyterHub's own poll comes every 30 s: only the watcher's push can make this.
        assert time.monotonic() - cancelled_at < 5, "the hub still thinks the server runs"
        time.sleep(0.1)
    log = hub.hub.log.read_text()
    assert f"The job {job['job_id']} of carol ended: The job was cancelled" in log


def test_operators_see_the_schedulers_health_and_users_do_not(hub: Hub) -> None:
    status, body = hub.api("GET", "/hpcgate/health")  # the test service holds read:hub
    assert status == 200, body
    assert body["ok"] is True
    [watcher] = body["watchers"]
    assert (watcher["scheduler"], watcher["transport"], watcher["failures_in_a_row"]) == (
        "slurm", "sudo", 0)
    assert watcher["running"] and watcher["last_ok"] is not None
    token = user_token(hub, "bob")
    req = urllib.request.Request(f"{hub.hub.url}/hub/api/hpcgate/health",
                                 headers={"Authorization": f"token {token}"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=10)  # noqa: S310 - the lab hub's own http URL
    assert refused.value.code == 403


def _as(hub: Hub, token: str, method: str, path: str, body: bytes | None = None) -> int:
    req = urllib.request.Request(f"{hub.hub.url}/hub/api{path}", method=method, data=body,
                                 headers={"Authorization": f"token {token}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - the lab hub's URL
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def test_the_hub_api_refuses_other_users_expired_tokens_and_a_servers_token(hub: Hub) -> None:
    status, _ = hub.spawn("alice", {"partition": "debug", "walltime": "0:20:00"})
    assert status in (201, 202), _
    hub.wait_ready("alice")
    try:
        # The server's own token (in its launch file, readable by alice and root only).
        launch = json.loads((server_dir(hub.lab, "alice") / "launch.json").read_text())
        server = launch["env"]["JUPYTERHUB_API_TOKEN"]
        assert _as(hub, server, "GET", "/user") == 200  # it may say whose it is
        for method, path in (("GET", "/users"), ("GET", "/users/bob"), ("POST", "/users/bob/server"),
                             ("DELETE", "/users/alice/server"), ("POST", "/users/alice/tokens"),
                             ("GET", "/hpcgate/health")):
            # 404 where JupyterHub hides whether the user exists from a token that may not look.
            assert _as(hub, server, method, path, b"{}" if method == "POST" else None) in (403, 404), path
        # bob's own valid token: nothing of alice's.
        bob = user_token(hub, "bob")
        for method, path in (("GET", "/users/alice"), ("DELETE", "/users/alice/server"),
                             ("POST", "/users/alice/tokens")):
            assert _as(hub, bob, method, path, b"{}" if method == "POST" else None) in (403, 404)
        report = json.dumps({"server_name": "", "host": "127.0.0.1", "port": 1}).encode()
        assert _as(hub, bob, "POST", "/hpcgate/report", report) == 403
        # An expired token of alice's: refused once it expires.
        status, body = hub.api("POST", "/users/alice/tokens", {"expires_in": 1, "note": "short"})
        assert status in (200, 201), body
        time.sleep(2.5)
        assert _as(hub, body["token"], "GET", "/user") == 403
    finally:
        hub.stop("alice")


def test_scancel_while_starting_fails_spawn_within_two_seconds(hub: Hub) -> None:
    # The spawn request returns only when the server is up (or after 10 s): send it aside.
    spawn = threading.Thread(target=hub.spawn, args=("carol",), daemon=True)
    spawn.start()
    deadline = time.monotonic() + 30
    while not [j for j in hub.active_jobs("carol") if j["job_state"] == "RUNNING"]:
        assert time.monotonic() < deadline, "carol's job never started"
        time.sleep(0.05)
    [job] = hub.active_jobs("carol")
    subprocess.run(["scancel", str(job["job_id"])], env={**os.environ, **hub.lab["slurm"]["env"]},
                   check=True)
    cancelled_at = time.monotonic()
    while hub.server("carol") is not None:
        assert time.monotonic() - cancelled_at < 2, "the spawn did not fail within 2 s"
        time.sleep(0.05)
    spawn.join(10)
    _, model = hub.api("GET", "/users/carol")
    assert model["servers"] == {}
    log = hub.hub.log.read_text()
    assert "Your job ended before JupyterLab started: The job was cancelled." in log


def test_three_hours_on_debug_fails_at_once_with_the_limit(hub: Hub) -> None:
    t0 = time.monotonic()
    status, body = hub.spawn("alice", {"partition": "debug", "walltime": "3:00:00"})
    assert time.monotonic() - t0 < 10
    assert status == 400, body
    assert ("Partition 'debug' allows at most 30 minutes of walltime; you asked for 3 hours."
            in body["message"])
    assert hub.server("alice") is None
    assert not hub.active_jobs("alice")


def orphans(hub: Hub, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", "jobs", "orphans", "--config",
                           str(hub.hub.config), *extra], capture_output=True, text=True, timeout=60)


def test_orphans_lists_and_cancels_a_job_no_server_owns(hub: Hub) -> None:
    stray = subprocess.run(
        ["sudo", "-u", "carol", "env", *[f"{k}={v}" for k, v in hub.lab["slurm"]["env"].items()],
         "sbatch", "--parsable", "-J", "hpcgate-carol", "-o", "/dev/null", "--wrap", "sleep 600"],
        capture_output=True, text=True, check=True, cwd="/").stdout.strip()
    listed = orphans(hub, "--json")
    assert listed.returncode == 1, listed.stderr
    assert [o["job_id"] for o in json.loads(listed.stdout)] == [stray]
    cancelled = orphans(hub, "--cancel")
    assert cancelled.returncode == 0 and f"job {stray}" in cancelled.stdout
    deadline = time.monotonic() + 10
    while hub.active_jobs("carol") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not hub.active_jobs("carol")


def test_hub_killed_keeps_running_server_and_adopts_pending_spawn(hub: Hub) -> None:
    env = [f"{k}={v}" for k, v in hub.lab["slurm"]["env"].items()]
    # Explicit options: JupyterHub would reuse alice's last ones (3 hours on debug).
    assert hub.spawn("alice", {"partition": "debug", "walltime": "0:20:00"})[0] in (201, 202)
    hub.wait_ready("alice")
    [alice_job] = hub.active_jobs("alice")
    # Fill c2 so that bob's server must wait in the queue.
    blocker = subprocess.run(
        ["sudo", "-u", "carol", "env", *env, "sbatch", "--parsable", "-w", "c2", "-c", "16",
         "--mem=8000", "-o", "/dev/null", "--wrap", "sleep 600"],
        capture_output=True, text=True, check=True, cwd="/").stdout.strip()
    try:
        threading.Thread(target=hub.spawn, args=("bob", {"partition": "long"}), daemon=True).start()
        deadline = time.monotonic() + 30
        while not [j for j in hub.active_jobs("bob") if j["state_reason"] == "Resources"]:
            assert time.monotonic() < deadline, hub.active_jobs("bob")
            time.sleep(0.1)
        [bob_job] = hub.active_jobs("bob")

        hub.hub.kill()
        hub.hub.start()
    finally:  # a failure here must not leave c2 full for every later test on the lab
        subprocess.run(["scancel", blocker], env={**os.environ, **hub.lab["slurm"]["env"]},
                       check=True)

    hub.wait_ready("bob", timeout=120)
    assert hub.get("/user/bob/api")[0] == 200
    assert [j["job_id"] for j in hub.active_jobs("bob")] == [bob_job["job_id"]]
    # alice's server survived the crash in the same job.
    assert hub.get("/user/alice/api")[0] == 200
    assert [j["job_id"] for j in hub.active_jobs("alice")] == [alice_job["job_id"]]
    listed = orphans(hub)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert "No orphan jobs" in listed.stdout
    hub.stop("alice")
    hub.stop("bob")


def _fill_c2(hub: Hub) -> str:
    """A job of carol's taking all of c2 (the `long` partition's node), once it runs."""
    env = [f"{k}={v}" for k, v in hub.lab["slurm"]["env"].items()]
    blocker = subprocess.run(
        ["sudo", "-u", "carol", "env", *env, "sbatch", "--parsable", "-w", "c2", "-c", "16",
         "--mem=8000", "-o", "/dev/null", "--wrap", "sleep 600"],
        capture_output=True, text=True, check=True, cwd="/").stdout.strip()
    deadline = time.monotonic() + 30
    while hub.job(int(blocker))["job_state"] != "RUNNING":
        assert time.monotonic() < deadline, hub.job(int(blocker))
        time.sleep(0.1)
    return blocker


def _card(hub: Hub, user: str, name: str = "") -> dict:
    status, body = hub.api("GET", f"/hpcgate/sessions/{user}")
    assert status == 200, body
    [card] = [c for c in body["sessions"] if c["name"] == name]
    return card


def test_a_queued_server_readopted_by_a_restarted_hub_stops_at_once(hub: Hub) -> None:
    """The hub restarted while bob's server and alice's named one wait in the queue (c2 full):
    the sessions API shows them queued (so the page offers Stop), and a stop, by an admin or by
    the user as the sessions page sends it, answers 202/204 at once (JupyterHub's own handler
    answered 500 "pending check" until the job started), cancels the job in Slurm and keeps
    the reason in the user's sessions."""
    blocker = _fill_c2(hub)
    try:
        threading.Thread(target=hub.spawn, args=("bob", {"partition": "long",
                                                         "walltime": "0:20:00"}),
                         daemon=True).start()
        threading.Thread(target=hub.spawn, args=("alice", {"partition": "long",
                                                           "walltime": "0:20:00"}, "q"),
                         daemon=True).start()
        deadline = time.monotonic() + 30
        while not all(any(j["job_state"] == "PENDING" for j in hub.active_jobs(u))
                      for u in ("alice", "bob")):
            assert time.monotonic() < deadline, hub.active_jobs("alice") + hub.active_jobs("bob")
            time.sleep(0.1)
        [bob_job] = hub.active_jobs("bob")
        [alice_job] = hub.active_jobs("alice")

        hub.hub.kill()
        hub.hub.start()
        shown = [_card(hub, "bob")["state"], _card(hub, "alice", "q")["state"]]

        alice_token = user_token(hub, "alice")
        t0 = time.monotonic()
        status, body = hub.api("DELETE", "/users/bob/server")
        assert status in (202, 204), (status, body)
        # alice herself, with her own token, as the sessions page's Stop does.
        status, _, text = fetch(hub, "/hub/api/users/alice/servers/q", alice_token,
                                method="DELETE")
        assert status in (202, 204), (status, text)
        assert time.monotonic() - t0 < 15
        assert shown == ["queued", "queued"]  # the page showed them queued, with Stop
        for user, name in (("bob", ""), ("alice", "q")):
            deadline = time.monotonic() + 30
            while hub.server(user, name) is not None:
                assert time.monotonic() < deadline, hub.server(user, name)
                time.sleep(0.2)
        for job in (bob_job, alice_job):
            deadline = time.monotonic() + 30
            while hub.job(job["job_id"])["job_state"] != "CANCELLED":
                assert time.monotonic() < deadline, hub.job(job["job_id"])
                time.sleep(0.2)
        for user, name, job in (("bob", "", bob_job), ("alice", "q", alice_job)):
            card = _card(hub, user, name)
            assert card["state"] == "stopped", card
            ended = card["history"][0]
            assert (ended["job_id"], ended["end_kind"]) == (str(job["job_id"]), "stopped"), ended
            assert ended["end_text"] == "Stopped from the portal."
        listed = orphans(hub)
        assert "No orphan jobs" in listed.stdout, listed.stdout + listed.stderr
    finally:
        subprocess.run(["scancel", blocker], env={**os.environ, **hub.lab["slurm"]["env"]},
                       check=True)


def test_a_queued_job_cancelled_outside_while_a_restarted_hub_waits_ends_its_server(
        hub: Hub) -> None:
    """bob's job waits in the queue across a hub restart, then an admin cancels it (scancel):
    the server ends at once with the reason in his sessions, not after start_timeout."""
    blocker = _fill_c2(hub)
    try:
        threading.Thread(target=hub.spawn, args=("bob", {"partition": "long",
                                                         "walltime": "0:20:00"}),
                         daemon=True).start()
        deadline = time.monotonic() + 30
        while not any(j["job_state"] == "PENDING" for j in hub.active_jobs("bob")):
            assert time.monotonic() < deadline, hub.active_jobs("bob")
            time.sleep(0.1)
        [job] = hub.active_jobs("bob")
        hub.hub.kill()
        hub.hub.start()
        assert _card(hub, "bob")["state"] == "queued"
        subprocess.run(["scancel", str(job["job_id"])],
                       env={**os.environ, **hub.lab["slurm"]["env"]}, check=True)
        deadline = time.monotonic() + 20
        while hub.server("bob") is not None:
            assert time.monotonic() < deadline, hub.server("bob")
            time.sleep(0.2)
        ended = _card(hub, "bob")["history"][0]
        assert (ended["job_id"], ended["end_kind"]) == (str(job["job_id"]), "cancelled"), ended
    finally:
        subprocess.run(["scancel", blocker], env={**os.environ, **hub.lab["slurm"]["env"]},
                       check=True)


def test_the_hub_keeps_its_users_and_servers_in_postgresql(hub: Hub) -> None:
    assert not (hub.hub.dir / "jupyterhub.sqlite").exists()
    assert hub.spawn("carol", {"partition": "debug", "walltime": "0:10:00"})[0] in (201, 202)
    try:
        hub.wait_ready("carol")
        [job] = hub.active_jobs("carol")
        engine = sqlalchemy.create_engine(postgres.database_url(hub.lab, database_name(hub.hub.dir)))
        try:
            with engine.connect() as conn:
                users = conn.execute(sqlalchemy.text("SELECT name FROM users")).scalars().all()
                states = conn.execute(sqlalchemy.text(
                    "SELECT s.state FROM spawners s JOIN users u ON s.user_id = u.id "
                    "WHERE u.name = 'carol' AND s.server_id IS NOT NULL")).scalars().all()
        finally:
            engine.dispose()
        assert {"alice", "bob", "carol"} <= set(users)
        # JupyterHub keeps a spawner's state as JSON text.
        assert [json.loads(s)["job_id"] for s in states] == [str(job["job_id"])]
    finally:
        hub.stop("carol")


def _saved_state(hub: Hub, user: str) -> dict:
    """The default server's state as the hub saved it in its database (this module's hubs keep
    it in PostgreSQL)."""
    engine = sqlalchemy.create_engine(postgres.database_url(hub.lab, database_name(hub.hub.dir)))
    try:
        with engine.connect() as conn:
            row = conn.execute(sqlalchemy.text(
                "SELECT spawners.state FROM spawners JOIN users ON users.id = spawners.user_id "
                "WHERE users.name = :user AND spawners.name = ''"), {"user": user}).fetchone()
    finally:
        engine.dispose()
    return json.loads(row[0] or "{}") if row else {}


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def _sbatch_sudo(hub_pid: int) -> int | None:
    """The hub's `sudo -u USER ... sbatch --parsable` once sudo has started sbatch (as its
    child): the sudo's pid. Only the hub's: other labs on the machine submit as the same users."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv[:2] == [b"sbatch", b"--parsable"]:
            sudo = _parent(int(entry))
            if sudo and _parent(sudo) == hub_pid:
                return sudo
    return None


def test_hub_killed_between_sbatch_and_saving_the_job_id_keeps_the_server(hub: Hub) -> None:
    """The hub's sudo around sbatch frozen (SIGSTOP) once sbatch runs, so that the job is made
    but the hub never learns its id, then the hub SIGKILLed: the new hub finds the job and the
    server runs in it."""
    import signal

    thread = threading.Thread(target=hub.spawn, args=("carol", {"partition": "debug",
                                                                 "walltime": "0:20:00"}),
                              daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while (sudo := _sbatch_sudo(hub.hub.proc.pid)) is None:
        assert time.monotonic() < deadline, "the hub never ran sbatch"
    # sbatch reads its script from the hub and prints the id into the hub's pipe, which stays
    # open while sudo (stopped) holds it: the hub waits, with the job made.
    os.kill(sudo, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 30
        while not [j for j in hub.active_jobs("carol") if j["name"] == "hpcgate-carol"]:
            assert time.monotonic() < deadline, "sbatch made no job"
            time.sleep(0.05)
        [job] = hub.active_jobs("carol")
        # The window: the job exists, the hub's saved state does not name it.
        assert not _saved_state(hub, "carol").get("job_id")
    finally:
        hub.hub.kill()
        os.kill(sudo, signal.SIGKILL)
    hub.hub.start()
    server = hub.wait_ready("carol", timeout=120)
    assert server["state"]["job_id"] == str(job["job_id"])
    assert hub.get("/user/carol/api")[0] == 200
    assert [j["job_id"] for j in hub.active_jobs("carol")] == [job["job_id"]]
    listed = orphans(hub)
    assert "No orphan jobs" in listed.stdout, listed.stdout + listed.stderr
    hub.stop("carol")
