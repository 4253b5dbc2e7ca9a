"""A real JupyterHub on the lab (gateway.lab.hub.LabHub) and a small client for its API, its proxy
routes and the servers behind them."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gateway.lab.hub import LabHub
from tests.helpers.lab import workdir


class Hub:
    """The running LabHub plus a small API client with the test service's token."""

    def __init__(self, lab: dict, hub: LabHub):
        self.lab, self.hub = lab, hub

    def api(self, method: str, path: str, body: Any = None, timeout: float = 30) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.hub.url}/hub/api{path}", data=data, method=method,
                                     headers={"Authorization": f"token {self.hub.service_token}"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                text = resp.read().decode()
                return resp.status, json.loads(text) if text else None
        except urllib.error.HTTPError as err:
            text = err.read().decode()
            try:
                return err.code, json.loads(text)
            except ValueError:
                return err.code, text

    def get(self, path: str, timeout: float = 10) -> tuple[int, str]:
        req = urllib.request.Request(f"{self.hub.url}{path}",
                                     headers={"Authorization": f"token {self.hub.service_token}"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def server(self, user: str, name: str = "") -> dict | None:
        _, model = self.api("GET", f"/users/{user}")
        return model["servers"].get(name)

    def wait_ready(self, user: str, name: str = "", timeout: float = 90) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            server = self.server(user, name)
            if server and server["ready"]:
                return server
            if server is None:
                raise AssertionError(f"{user}'s server went away while starting")
            time.sleep(0.2)
        raise AssertionError(f"{user}'s server not ready after {timeout} s: {self.server(user, name)}")

    def spawn(self, user: str, options: dict | None = None, name: str = "") -> tuple[int, Any]:
        path = f"/users/{user}/servers/{name}" if name else f"/users/{user}/server"
        return self.api("POST", path, options or {})

    def stop(self, user: str, name: str = "") -> None:
        path = f"/users/{user}/servers/{name}" if name else f"/users/{user}/server"
        status, _ = self.api("DELETE", path)
        assert status in (202, 204)
        deadline = time.monotonic() + 60
        while self.server(user, name) is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert self.server(user, name) is None

    def stop_quietly(self, user: str, name: str = "") -> None:
        """Teardown: stop the server if it is there; the lab's `down` cancels whatever is left."""
        try:
            if self.server(user, name) is not None:
                self.stop(user, name)
        except Exception as err:
            print(f"stopping {user}'s server: {err}")

    def jobs(self, user: str) -> list[dict]:
        return [j for j in self.jobs_all()
                if j["user_name"] == user and j["name"].startswith("hpcgate-")]

    def job(self, job_id: int) -> dict:
        return next(j for j in self.jobs_all() if j["job_id"] == job_id)

    def jobs_all(self) -> list[dict]:
        out = subprocess.run(["squeue", "--json"], env={**os.environ, **self.lab["slurm"]["env"]},
                             capture_output=True, text=True, check=True).stdout
        return json.loads(out)["jobs"]

    def active_jobs(self, user: str) -> list[dict]:
        return [j for j in self.jobs(user)
                if j["job_state"] in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING")]


@contextlib.contextmanager
def running_hub(lab: dict, name: str, users: tuple[str, ...] = (), hub_class: type[Hub] = Hub,
                **labhub: Any) -> Iterator[Any]:
    """A LabHub in a fresh state directory, started, with `users` made (and, without LDAP login,
    given the directory's identity: their servers work in the lab's homes); stopped and removed
    afterwards, whatever happened. HPCGATE_KEEP_HUB=1 keeps the state directory to look at."""
    state = Path("/var/tmp") / f"hpcgate-hub-{name}-{uuid.uuid4().hex[:8]}"
    h = hub_class(lab, LabHub(lab, state, **labhub))
    try:
        h.hub.start()
        h.hub.add_users(users)
        yield h
    finally:
        _stop_servers(h)  # a failed test must not leave jobs to the next module (a shared lab)
        h.hub.stop()
        if os.environ.get("HPCGATE_KEEP_HUB") is None:
            h.hub.drop_database()
            shutil.rmtree(state, ignore_errors=True)


def _stop_servers(hub: Hub) -> None:
    """Stop every server of every user of a hub that is still up (best effort)."""
    try:
        status, users = hub.api("GET", "/users", timeout=10)
    except OSError:
        return
    if status != 200:
        return
    for user in users:
        for name in user.get("servers", {}):
            path = f"/users/{user['name']}/servers/{name}" if name else f"/users/{user['name']}/server"
            with contextlib.suppress(OSError):
                hub.api("DELETE", path, timeout=60)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            status, users = hub.api("GET", "/users", timeout=10)
            if status != 200 or not any(u.get("servers") for u in users):
                return
        time.sleep(0.5)


def server_dir(lab: dict, user: str, server: str = "default") -> Path:
    """The server's state directory: launch file and job log, in the user's lab home."""
    return workdir(lab, user) / ".hpcgate" / "servers" / server


def job_log(lab: dict, user: str, server: str = "default") -> str:
    return (server_dir(lab, user, server) / "job.log").read_text()


def user_token(hub: Hub, user: str) -> str:
    status, body = hub.api("POST", f"/users/{user}/tokens", {"expires_in": 900, "note": "tests"})
    assert status in (200, 201), body
    return body["token"]


def fetch(hub: Hub, path: str, token: str, method: str = "GET", headers: dict | None = None,
          body: bytes | None = None, timeout: float = 10) -> tuple[int, Any, bytes]:
    req = urllib.request.Request(f"{hub.hub.url}{path}", method=method, data=body,
                                 headers={"Authorization": f"token {token}", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.headers, resp.read()  # headers: case-insensitive
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def tunnel_port(hub: Hub, user: str) -> int:
    """The loopback port the proxy routes `user`'s server to (a tunnel's or a forward's end)."""
    _, routes = hub.api("GET", "/proxy")
    [target] = [r["target"] for spec, r in routes.items() if spec.endswith(f"/user/{user}/")]
    m = re.fullmatch(r"http://127\.0\.0\.1:(\d+)", target.rstrip("/"))
    assert m, target
    return int(m.group(1))
