"""The chaos suite's hands: the lab, one LabHub (made anew after a kill, as a restarted demo
would), its API, the servers' reachability through the proxy, Slurm's view, and what a trial
records."""

from __future__ import annotations

import http.cookiejar
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.lab import Lab
from gateway.lab.hub import LabHub, directory_identity
from gateway.lab.procs import pid_alive
from gateway.lab.replica import DirectoryCopy, start_directory_copy
from gateway.lab.site import PINNED_NODES, with_changes

USERS = ("alice", "bob")
# carol's servers are the home_full scenario's (her home gets a small tmpfs): alice's and bob's
# steady servers never see it.
HUB_USERS = (*USERS, "carol")
# How often the hub checks that its proxy runs (configurable-http-proxy's check_running_interval):
# a killed proxy must be back, with its routes, within about this long.
PROXY_CHECK_INTERVAL = 5
AUTH_REFRESH_AGE = 5
EXTRA_CONFIG = (
    "c.JupyterHub.allow_named_servers = True\n"
    f"c.ConfigurableHTTPProxy.check_running_interval = {PROXY_CHECK_INTERVAL}\n"
    f"c.JupyterHub.last_activity_interval = {PROXY_CHECK_INTERVAL}\n"
    # Logged-in users are re-read from the directory this often: a directory outage must not
    # end their sessions (the authenticator keeps them while it cannot ask).
    f"c.Authenticator.auth_refresh_age = {AUTH_REFRESH_AGE}\n"
)
# Reverse tunnels from both nodes (debug runs on c1, long on c2); each user may run a few servers.
POLICY = with_changes(PINNED_NODES, {"connection": {"mode": "reverse"},
                                     "groups": {"hpc-users": {"max_servers": 4}}})
ACTIVE = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED")
BLOCKER_NAME = "chaos-blocker"


@dataclass
class Trial:
    """One repetition of a scenario and what it found."""

    scenario: str
    number: int
    timing: str = ""
    passed: bool = True
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    detection: float | None = None  # seconds, where the scenario measures one
    http_5xx: int = 0
    lost_servers: int = 0
    orphan_jobs: int = 0
    wrong_states: int = 0

    def fail(self, why: str) -> None:
        self.passed = False
        self.reasons.append(why)

    def line(self) -> str:
        det = f" detected in {self.detection:.2f} s" if self.detection is not None else ""
        verdict = "passed" if self.passed else "FAILED: " + "; ".join(self.reasons)
        notes = f" ({'; '.join(self.notes)})" if self.notes else ""
        return f"{self.scenario} #{self.number} [{self.timing}]{det}: {verdict}{notes}"


class Chaos:
    """The lab (`info`, as lab.json says) and one LabHub in `state_dir`, with helpers."""

    def __init__(self, lab: Lab, info: dict[str, Any], state_dir: Path, say: Any = print):
        self.lab, self.info, self.state = lab, info, Path(state_dir)
        self.env = {**os.environ, **info["slurm"]["env"]}
        self.say = say
        self.state.mkdir(parents=True, exist_ok=True)
        # Logins go to the lab's slapd first, then to this replica (a copy on ports of its own):
        # the directory scenario stops one, then both.
        self.replica: DirectoryCopy = start_directory_copy(info, self.state / "replica")
        try:
            self.hub = self._new_hub()
        except BaseException:
            self.replica.stop()
            raise
        self._tokens: dict[str, str] = {}
        # Each user's last logged-in browser session (its cookies), from login().
        self.sessions: dict[str, urllib.request.OpenerDirector] = {}
        # In every server name of this run: jobs and key lines of earlier runs (finished jobs stay
        # in squeue for MinJobAge) are never taken for this run's.
        self.run_tag = os.urandom(2).hex()
        # When the steady servers' tunnels last (re)connected (time.monotonic()).
        self.tunnels_since = time.monotonic()

    # -- the hub ------------------------------------------------------------------------------------

    def _new_hub(self) -> LabHub:
        servers = [self.info["ldap"]["uri"], self.replica.uri]
        return LabHub(self.info, self.state, policy=POLICY, ldap_login=True,
                      extra_config=EXTRA_CONFIG + f"c.LDAPAuthenticator.server_urls = {servers!r}\n")

    def start(self) -> None:
        self.hub.start(timeout=120)
        self.hub.add_users(HUB_USERS)
        for user in HUB_USERS:  # what their first login would write (servers start by the API)
            status, body = self.api("PATCH", f"/users/{user}",
                                    {"auth_state": directory_identity(self.info, user)})
            if status != 200:
                raise RuntimeError(f"the hub refused {user}'s auth_state: {status} {body}")

    def kill_hub(self) -> None:
        self.hub.kill()

    def restart_hub(self) -> float:
        """A new LabHub object on the same state directory, started; seconds it took to answer."""
        t0 = time.monotonic()
        self.hub = self._new_hub()
        self.hub.start(timeout=120)
        return time.monotonic() - t0

    def stop(self) -> None:
        """Hub, proxy and the replica directory (never the jobs: the scenarios stop their
        servers themselves)."""
        try:
            self.hub.stop()
        finally:
            self.replica.stop()

    def log_size(self) -> int:
        try:
            return self.hub.log.stat().st_size
        except OSError:
            return 0

    def log_since(self, offset: int) -> str:
        with open(self.hub.log, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    # -- HTTP ---------------------------------------------------------------------------------------

    def request(self, method: str, path: str, token: str | None = None, body: Any = None,
                timeout: float = 10) -> tuple[int, str]:
        """(status, text) through the proxy; status 0 when nothing answered."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(  # noqa: S310 - the lab hub's own http URL
            f"{self.hub.url}{path}", data=data, method=method,
            headers={"Authorization": f"token {token or self.hub.service_token}"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
                return resp.status, resp.read().decode(errors="replace")
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode(errors="replace")
        except OSError as err:
            return 0, str(err)

    def password(self, user: str) -> str:
        return json.loads(Path(self.info["ldap"]["passwords_file"]).read_text())[user]

    def login(self, user: str, password: str, timeout: float = 30) -> tuple[int, float, str]:
        """Log in through the hub's real login page (through the proxy): (status, seconds the
        POST took, the page's text). 302 is a login that worked; a refusal is the login page
        again, with its sentence."""
        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args: Any, **kwargs: Any) -> None:
                return None

        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), NoRedirect)
        try:
            opener.open(f"{self.hub.url}/hub/login", timeout=timeout).read()
        except urllib.error.HTTPError as err:
            return err.code, 0.0, err.read().decode(errors="replace")
        except OSError as err:
            return 0, 0.0, str(err)
        xsrf = next((c.value for c in jar if c.name == "_xsrf"), "")
        data = urllib.parse.urlencode({"username": user, "password": password,
                                       "_xsrf": xsrf}).encode()
        t0 = time.monotonic()
        try:
            with opener.open(f"{self.hub.url}/hub/login", data=data,
                             timeout=timeout) as resp:
                return resp.status, time.monotonic() - t0, resp.read().decode(errors="replace")
        except urllib.error.HTTPError as err:
            if err.code == 302:
                self.sessions[user] = opener
            return err.code, time.monotonic() - t0, err.read().decode(errors="replace")
        except OSError as err:
            return 0, time.monotonic() - t0, str(err)

    def browse(self, user: str, path: str, timeout: float = 30) -> int:
        """GET `path` in `user`'s logged-in browser session: the status (a redirect to the
        login page is 0: the session is gone)."""
        if user not in self.sessions:
            return 0
        try:
            with self.sessions[user].open(f"{self.hub.url}{path}", timeout=timeout) as resp:
                return resp.status
        except urllib.error.HTTPError as err:
            return 0 if "/hub/login" in (err.headers.get("Location") or "") else err.code
        except OSError:
            return 0

    def api(self, method: str, path: str, body: Any = None, timeout: float = 30) -> tuple[int, Any]:
        status, text = self.request(method, f"/hub/api{path}", body=body, timeout=timeout)
        try:
            return status, json.loads(text) if text else None
        except ValueError:
            return status, text

    def token(self, user: str) -> str:
        """A token of `user`'s own (kept in the hub's database across restarts)."""
        if user not in self._tokens:
            status, body = self.api("POST", f"/users/{user}/tokens",
                                    {"expires_in": 7200, "note": "chaos"})
            if status not in (200, 201):
                raise RuntimeError(f"no token for {user}: {status} {body}")
            self._tokens[user] = body["token"]
        return self._tokens[user]

    def reach(self, user: str, name: str, timeout: float = 10) -> int:
        """GET /user/USER/NAME/api with the user's token, through the proxy: the status."""
        return self.request("GET", f"/user/{user}/{name}/api", self.token(user), timeout=timeout)[0]

    def health(self) -> tuple[int, Any]:
        return self.api("GET", "/hpcgate/health", timeout=10)

    # -- servers ------------------------------------------------------------------------------------

    def server(self, user: str, name: str) -> dict | None:
        """The hub's model of the server, None when it has none; raises when the hub is down."""
        status, model = self.api("GET", f"/users/{user}")
        if status != 200:
            raise RuntimeError(f"GET /users/{user} answered {status}: {model}")
        return model["servers"].get(name)

    def spawn(self, user: str, name: str, options: dict[str, Any]) -> threading.Thread:
        """POST the spawn aside (it returns only once the server is up, or after 10 s)."""
        def post() -> None:
            status, body = self.api("POST", f"/users/{user}/servers/{name}", options, timeout=60)
            if status not in (0, 201, 202):
                self.say(f"    spawn {user}/{name} answered {status}: {body}")
        thread = threading.Thread(target=post, daemon=True)
        thread.start()
        # Back once the hub has the server (or the POST ended): a caller that asks about it
        # straight away must not read "no such server" as "ended".
        deadline = time.monotonic() + 15
        while thread.is_alive() and time.monotonic() < deadline:
            try:
                if self.server(user, name) is not None:
                    break
            except RuntimeError:
                pass
            time.sleep(0.02)
        return thread

    def wait_ready(self, user: str, name: str, timeout: float = 120) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                model = self.server(user, name)
            except RuntimeError:
                model = {}
            if model is None:
                return False
            if model.get("ready") and self.reach(user, name) == 200:
                return True
            time.sleep(0.3)
        return False

    def settle(self, user: str, name: str, timeout: float = 90) -> str:
        """Wait until the server is running and reachable ("running") or gone ("ended");
        "stuck: ..." when neither happens in time."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = self.server(user, name)
            except RuntimeError as err:
                last = str(err)
            if last is None:
                return "ended"
            if isinstance(last, dict) and last.get("ready") and self.reach(user, name) == 200:
                return "running"
            time.sleep(0.5)
        if isinstance(last, dict):
            state = last.get("state") or {}
            last = (f"pending={last.get('pending')} ready={last.get('ready')} "
                    f"job={state.get('job_id')} address={state.get('host')}:{state.get('port')}")
        return f"stuck after {timeout:.0f} s: {last}"

    def remove(self, user: str, name: str, timeout: float = 60) -> tuple[bool, int]:
        """Stop the server (if any) and remove it from the hub: (gone, how many 5xx the hub
        answered meanwhile)."""
        deadline = time.monotonic() + timeout
        errors = 0
        while time.monotonic() < deadline:
            status, body = self.api("DELETE", f"/users/{user}/servers/{name}", {"remove": True})
            if status == 404:
                return True, errors
            if status >= 500:
                errors += 1
                if errors == 1:
                    self.say(f"    removing {user}/{name}: {status} {body}")
            time.sleep(1)
            try:
                if self.server(user, name) is None:
                    return True, errors
            except RuntimeError:
                pass
        return False, errors

    # -- Slurm --------------------------------------------------------------------------------------

    def slurm(self, *argv: str, check: bool = True, timeout: float = 30) -> str:
        return subprocess.run(list(argv), env=self.env, capture_output=True, text=True,
                              check=check, timeout=timeout).stdout

    def jobs(self) -> list[dict[str, Any]]:
        """Every job slurmctld holds, finished ones (within MinJobAge) included; [] when down."""
        try:
            return json.loads(self.slurm("squeue", "--json", "-t", "all"))["jobs"]
        except (subprocess.SubprocessError, ValueError, KeyError):
            return []

    @staticmethod
    def job_name(user: str, name: str) -> str:
        return f"hpcgate-{user}-{name}"

    def server_job(self, user: str, name: str, jobs: list[dict] | None = None) -> dict | None:
        """The newest job of that server, finished or not."""
        mine = [j for j in (self.jobs() if jobs is None else jobs)
                if j["name"] == self.job_name(user, name)]
        return max(mine, key=lambda j: j["job_id"]) if mine else None

    @staticmethod
    def active(job: dict | None) -> bool:
        return job is not None and job["job_state"] in ACTIVE

    def block(self, node: str) -> str:
        """A job of carol's that takes every core of `node`, so that the next job there waits."""
        out = subprocess.run(
            ["sudo", "-u", "carol", "env", *[f"{k}={v}" for k, v in self.info["slurm"]["env"].items()],
             "sbatch", "--parsable", "-J", BLOCKER_NAME, "-w", node, "-c", "16", "--mem=1000",
             "-t", "10", "-o", "/dev/null", "--wrap", "sleep 600"],
            capture_output=True, text=True, check=True, cwd="/", timeout=30).stdout
        return out.strip().split(";")[0]

    def cancel(self, *job_ids: str) -> None:
        if job_ids:
            self.slurm("scancel", *job_ids, check=False)

    def cancel_blockers(self) -> None:
        self.slurm("scancel", "-n", BLOCKER_NAME, check=False)

    def orphans(self) -> list[dict[str, Any]]:
        """`hpcgate jobs orphans --json` on this hub's configuration."""
        res = subprocess.run([sys.executable, "-m", "gateway.cli", "jobs", "orphans", "--config",
                              str(self.hub.config), "--json"], capture_output=True, text=True,
                             timeout=60)
        if res.returncode not in (0, 1):
            raise RuntimeError(f"hpcgate jobs orphans failed: {res.stderr.strip()}")
        return json.loads(res.stdout) if res.stdout.strip() else []

    def key_lines(self, user: str, name: str) -> list[str]:
        """The tunnel account's authorized_keys lines of that server."""
        tag = f"hpcgate-job:{user}-{name}-"
        try:
            text = Path(self.info["tunnel"]["authorized_keys"]).read_text()
        except OSError:
            return []
        return [line for line in text.splitlines() if tag in line]

    # -- lab daemons --------------------------------------------------------------------------------

    def pid(self, service: str) -> int | None:
        pid = self.lab.info().get("pids", {}).get(service)
        return pid if pid_alive(pid) else None

    def stop_daemon(self, service: str, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        pid = self.pid(service)
        if pid is None:
            return
        os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)

    def lab_up(self) -> None:
        """Start whatever lab daemon is not running (Lab.up is idempotent)."""
        self.info = self.lab.up(nodes=2)
