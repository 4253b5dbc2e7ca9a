"""A real JupyterHub (behind configurable-http-proxy or hpcgate-nginx) on the lab, for `make demo`
and the tests.

The hub API listens on the lab's veth address (reachable from the host and from node c2, nowhere
else), the proxy on 127.0.0.1. The hub and its proxy run as the unprivileged account hpcgate-hub,
as on a site: it submits jobs as the lab users through exactly the sudoers rules `hpcgate
deploy-files` writes for the hub's policy (installed in /etc/sudoers.d by `start()`), and its
state directory is its own. So every test with a hub proves that the least-privilege setup works.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gateway.lab.accounts import HUB_USER, ensure_hub_account
from gateway.lab.procs import free_port, hub_failure, pid_alive, run, stop_pids

PROXIES = ("chp", "nginx")
DATABASES = ("sqlite", "postgresql")


def proxy_config(proxy: str, state_dir: Path, api_port: int) -> str:
    """The proxy's part of the lab's jupyterhub_config.py: configurable-http-proxy ("chp") or
    hpcgate-nginx ("nginx"). Either way its pid is in state_dir/jupyterhub-proxy.pid, where
    LabHub.stop finds it (the hub leaves its proxy running: cleanup_proxy is off)."""
    if proxy == "chp":
        chp = str(Path(sys.executable).parent / "configurable-http-proxy")
        return (f'c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{api_port}"\n'
                f"c.ConfigurableHTTPProxy.command = [{chp!r}]\n")
    if proxy == "nginx":
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        return ('c.JupyterHub.proxy_class = "hpcgate-nginx"\n'
                f"c.NginxProxy.state_dir = {str(state_dir / 'nginx')!r}\n"
                f"c.NginxProxy.nginx_path = {nginx!r}\n"
                f"c.NginxProxy.pid_file = {str(state_dir / 'jupyterhub-proxy.pid')!r}\n")
    raise ValueError(f"proxy must be one of {PROXIES}, not {proxy!r}")


def hub_config(info: dict[str, Any], state_dir: Path, policy_file: Path, proxy_port: int,
               hub_port: int, api_port: int, service_token: str | None = None,
               extra: str = "", proxy: str = "nginx", db_url: str | None = None) -> str:
    """The text of a jupyterhub_config.py for the lab (`db_url`: SQLite in state_dir unless
    given)."""
    db_url = db_url or f"sqlite:///{state_dir}/jupyterhub.sqlite"
    nodes = info["nodes"]
    hub_ip = nodes["c2"]["hub_address"] if "c2" in nodes else "127.0.0.1"
    users = sorted(info["users"])
    service = ""
    if service_token:
        service = f"""
c.JupyterHub.services = [{{"name": "hpcgate-tests", "api_token": {service_token!r}}}]
c.JupyterHub.load_roles = [{{
    "name": "hpcgate-tests",
    "scopes": ["admin:users", "admin:servers", "access:servers", "read:users", "tokens", "proxy",
               "read:hub"],
    "services": ["hpcgate-tests"],
}}]
"""
    return f"""# JupyterHub on the hpcgate lab (generated; see gateway/lab/hub.py)
c = get_config()  # noqa: F821
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {proxy_port}
c.JupyterHub.hub_ip = {hub_ip!r}
c.JupyterHub.hub_port = {hub_port}
{proxy_config(proxy, state_dir, api_port)}c.JupyterHub.db_url = {db_url!r}
c.JupyterHub.cookie_secret_file = "{state_dir}/cookie_secret"
c.JupyterHub.pid_file = "{state_dir}/jupyterhub.pid"
c.JupyterHub.cleanup_servers = False
c.JupyterHub.cleanup_proxy = False
c.Authenticator.allowed_users = {set(users)!r}
from gateway.hub import configure  # noqa: E402 - as a site writes it
configure(c, {str(policy_file)!r})  # the spawner, its policy (checked here), hpcgate's routes
c.BatchSpawner.default_url = "/lab"
{service}
{extra}
"""


# What admins may do but open servers, reroute the proxy, edit groups or auth_state (which names
# the Unix account jobs run as): see and add users, start and stop servers, read the rest.
# They also read everyone's activity history (gateway.hub.activity_access.READ_ALL_SCOPE).
OPERATOR_SCOPES = ["admin-ui", "users", "read:roles:users", "admin:servers", "list:groups",
                   "read:groups", "list:services", "read:services", "read:hub", "read:roles",
                   "custom:hpcgate:read:activity"]


def ldap_config(info: dict[str, Any]) -> str:
    """Log in against the lab's directory: search-then-bind over StartTLS, CA verified."""
    ldap = info["ldap"]
    nodes = info["nodes"]
    hub_ip = nodes["c2"]["hub_address"] if "c2" in nodes else "127.0.0.1"
    return f"""
c.JupyterHub.authenticator_class = "hpcgate-ldap"
c.LDAPAuthenticator.server_urls = [{ldap["uri"]!r}]
c.LDAPAuthenticator.tls_ca_file = {ldap["ca_cert"]!r}
c.LDAPAuthenticator.service_dn = {ldap["service_dn"]!r}
c.LDAPAuthenticator.user_search_base = {ldap["people_dn"]!r}
c.LDAPAuthenticator.group_search_base = {ldap["groups_dn"]!r}
c.LDAPAuthenticator.allowed_groups = {{"hpc-users"}}
# The proxy reaches the hub on the lab's hub address: its X-Forwarded-For entry names the client.
c.LDAPAuthenticator.trusted_proxies = ["127.0.0.0/8", "::1", {hub_ip!r}]
c.Authenticator.enable_auth_state = True
# JupyterHub's admin role cannot be edited and includes access:servers (opening any user's
# server, and through it their files and depots). The portal's operators get every admin power
# but that one, by a role on their directory group (kept in step at each login).
c.Authenticator.manage_groups = True
c.JupyterHub.load_roles.append({{
    "name": "hub-operator",
    "description": "Run the portal: users, groups and their servers, without opening servers.",
    "scopes": {OPERATOR_SCOPES!r},
    "groups": ["hub-admins"],
}})
"""


def directory_identity(info: dict[str, Any], user: str) -> dict[str, Any]:
    """The auth_state a login to the lab's directory gives `user` (see auth/directory.py). Hubs
    without LDAP login (tests, benchmarks) get it through the API (`LabHub.add_users`): the hub
    keeps it encrypted with the crypt key LabHub always sets."""
    from gateway.lab.directory import user_dn

    about = info["users"][user]
    return {"dn": user_dn(user), "uid": user, "uidNumber": about["uid"], "gidNumber": about["gid"],
            "homeDirectory": about["workdir"], "loginShell": "/bin/bash",
            "groups": list(about["groups"]), "group_dns": []}


def database_name(state_dir: Path) -> str:
    """The PostgreSQL database of the hub in `state_dir`: the same for every LabHub made on that
    state (a restarted hub finds its users and servers), another for every other state."""
    import hashlib

    return "hub_" + hashlib.sha256(str(Path(state_dir).resolve()).encode()).hexdigest()[:16]


def _set_hub_api_url(policy_file: Path, info: dict[str, Any], hub_port: int) -> None:
    """The policy's connection.hub_api_url, pointed at this hub (demo.yaml has a placeholder)."""
    import yaml

    nodes = info["nodes"]
    hub_ip = nodes["c2"]["hub_address"] if "c2" in nodes else "127.0.0.1"
    lines = policy_file.read_text().splitlines(keepends=True)
    header = "".join(line for line in lines if line.startswith("#"))
    policy = yaml.safe_load(policy_file.read_text())
    policy["connection"]["hub_api_url"] = f"http://{hub_ip}:{hub_port}/hub/api"
    policy_file.write_text(header + yaml.safe_dump(policy, sort_keys=False))


SUDOERS_DIR = Path("/etc/sudoers.d")
SUDOERS_PREFIX = "hpcgate-lab-"


def install_sudoers(policy_file: Path) -> Path | None:
    """The policy's sudoers file from `hpcgate deploy-files`, checked by visudo and installed in
    /etc/sudoers.d under a name made from its text (labs and hubs side by side each keep theirs;
    `Lab.down` removes a lab's). None when the policy needs no sudo on this host."""
    from gateway.admin.deploy import sudo_runs_as, sudoers
    from gateway.policy.load import load_policy

    policy = load_policy(str(policy_file))
    if sudo_runs_as(policy) != "hub":
        return None
    return install_sudoers_text(sudoers(policy, HUB_USER, str(policy_file)))


def install_sudoers_text(text: str) -> Path:
    """`text` checked by visudo and installed in /etc/sudoers.d (see install_sudoers); it must
    name the lab's directory, so that `Lab.down` removes it."""
    import hashlib

    target = SUDOERS_DIR / f"{SUDOERS_PREFIX}{hashlib.sha256(text.encode()).hexdigest()[:16]}"
    if target.exists() and target.read_text() == text:
        return target
    tmp = SUDOERS_DIR / f".{target.name}.tmp"  # sudo skips names with a dot
    tmp.write_text(text)
    tmp.chmod(0o440)
    try:
        run(["visudo", "-cqf", str(tmp)])
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def batchspawner_sudoers() -> str:
    """What batchspawner's README asks of a hub that does not run as root: `sudo -E -u USER`
    for its batch commands (here prefixed by `env`, which pins the lab's SLURM_CONF), keeping
    the hub's environment (SETENV). Never as root. For the benchmarks' anchor hubs."""
    return f"{HUB_USER} ALL = (ALL, !root) NOPASSWD:SETENV: /usr/bin/env\n"


def remove_sudoers(lab_dir: Path) -> None:
    """The sudoers files of hubs on the lab in `lab_dir` (they name its slurm.conf)."""
    marker = f"{Path(lab_dir)}/".replace(":", "\\:")
    for path in SUDOERS_DIR.glob(f"{SUDOERS_PREFIX}*"):
        try:
            if marker in path.read_text():
                path.unlink()
        except OSError:
            continue


def give_to_hub(state_dir: Path) -> None:
    """The hub's state directory and everything in it: the hub account's, as StateDirectory= makes
    it on a site. Files a test left there (an earlier root hub's database) change owner too."""
    uid, gid = ensure_hub_account()
    for root, dirs, files in os.walk(state_dir):
        for name in [*dirs, *files]:
            os.lchown(os.path.join(root, name), uid, gid)
    os.chown(state_dir, uid, gid)
    state_dir.chmod(0o750)


class LabHub:
    """One jupyterhub process (and its proxy) in `state_dir`; `start()`, `kill()`, `stop()`."""

    def __init__(self, info: dict[str, Any], state_dir: Path, extra_config: str = "",
                 policy: dict[str, Any] | None = None, ldap_login: bool = False,
                 proxy_port: int = 0, proxy: str = "nginx", database: str = "sqlite",
                 extra_sudoers: str = ""):
        """`extra_config` is JupyterHub's own configuration; `policy` holds changes to the lab's
        site policy (demo.yaml made concrete), section by section; `proxy` is "nginx"
        (hpcgate-nginx, the default) or "chp" (configurable-http-proxy); `database` is "sqlite"
        (a file in the state directory, the default) or "postgresql" (a database of its own on
        the lab's PostgreSQL: `hpcgate lab up --postgres`). `extra_sudoers`: more sudoers rules
        for the hub's account (an anchor's spawner, which runs its own sudo commands), installed
        by start() beside the policy's."""
        if database not in DATABASES:
            raise ValueError(f"database must be one of {DATABASES}, not {database!r}")
        self.info = info
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ldap_login = ldap_login
        if ldap_login:
            extra_config = ldap_config(info) + extra_config
        self.proxy_port, self.hub_port, self.api_port = self._ports(proxy_port)
        from gateway.lab.site import write_lab_site

        self.policy_file = write_lab_site(info, info["ldap"]["service_password_file"],
                                          self.dir / "site.yaml", overrides=policy)
        _set_hub_api_url(self.policy_file, info, self.hub_port)
        self._own_login_node_key()
        self.service_token = secrets.token_hex(24)
        self.url = f"http://127.0.0.1:{self.proxy_port}"
        self.database = database
        db_url = None
        if database == "postgresql":
            from gateway.lab import postgres

            db_url = postgres.create_database(info, database_name(self.dir))
        self.config = self.dir / "jupyterhub_config.py"
        self.config.write_text(hub_config(info, self.dir, self.policy_file, self.proxy_port,
                                          self.hub_port, self.api_port, self.service_token,
                                          extra_config, proxy=proxy, db_url=db_url))
        self.config.chmod(0o600)
        self._crypt_key()  # made (root's, 0600) before the directory goes to the hub
        self.sudoers: Path | None = None  # the rules start() installs for the hub's account
        self.extra_sudoers = extra_sudoers
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "jupyterhub.log"

    def _ports(self, proxy_port: int) -> tuple[int, int, int]:
        """(proxy, hub, proxy API) ports, the same for every hub made on this state directory: a
        running job's launcher and tunnel point at the hub API's port, and a proxy left running
        by a killed hub is found on its own. `proxy_port` (the demo's 8000) wins when given."""
        saved_file = self.dir / "ports.json"
        try:
            saved = {k: int(v) for k, v in json.loads(saved_file.read_text()).items()}
        except (OSError, ValueError, TypeError, AttributeError):
            saved = {}
        ports = {"proxy": proxy_port or saved.get("proxy") or free_port(),
                 "hub": saved.get("hub") or free_port(), "api": saved.get("api") or free_port()}
        if ports != saved:
            saved_file.write_text(json.dumps(ports))
        return ports["proxy"], ports["hub"], ports["api"]

    def _own_login_node_key(self) -> None:
        """The key of the hub's login-node forwards, as on a site: the hub account's own file
        (a copy of the lab's, which stays root's), named in the policy."""
        import yaml

        text = self.policy_file.read_text()
        policy = yaml.safe_load(text)
        conn = policy.get("connection") or {}
        if conn.get("mode") != "login-node" or not conn.get("login_node_key"):
            return
        own = self.dir / "login_node_ed25519"
        own.write_bytes(Path(conn["login_node_key"]).read_bytes())
        own.chmod(0o600)  # given to the hub's account with the directory (give_to_hub)
        conn["login_node_key"] = str(own)
        header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
        self.policy_file.write_text(header + yaml.safe_dump(policy, sort_keys=False))

    def start(self, timeout: float = 60) -> None:
        uid, gid = ensure_hub_account()
        self.sudoers = install_sudoers(self.policy_file)
        if self.extra_sudoers:
            install_sudoers_text(f"# for a hub on the lab in {self.info['dir']}/\n"
                                 f"{self.extra_sudoers}")
        give_to_hub(self.dir)
        self._crypt_key_file().chmod(0o600)
        os.chown(self._crypt_key_file(), 0, 0)  # the hub gets it in its environment, as on a site
        # Nothing of root's environment: what a systemd unit would give the hub account.
        env = {"JUPYTERHUB_CRYPT_KEY": self._crypt_key(), "HOME": str(self.dir),
               "LANG": os.environ.get("LANG", "C.UTF-8"), "USER": HUB_USER, "LOGNAME": HUB_USER,
               "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin"}
        if self.ldap_login:
            # The service account's password reaches the hub by its environment, not its config.
            env["HPCGATE_LDAP_SERVICE_PASSWORD"] = Path(
                self.info["ldap"]["service_password_file"]).read_text().strip()
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "jupyterhub", "-f", str(self.config)], cwd=self.dir,
                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                user=uid, group=gid, extra_groups=[], umask=0o027)
        failure = hub_failure(self.proc, self.url, timeout)
        if failure:
            # The log's end in the error itself: a test run's report must say why, since test
            # helpers remove the hub's directory afterwards.
            tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-15:])
            raise RuntimeError(f"{failure}; see {self.log}; it ends:\n{tail}")

    def add_users(self, users: Iterable[str]) -> None:
        """Create `users` in the running hub (if missing) with the auth_state the lab's directory
        gives them at login, so that their servers work in this lab's homes, not in /home."""
        import json
        import urllib.error
        import urllib.request

        def once(method: str, path: str, body: Any = None) -> int:
            req = urllib.request.Request(  # noqa: S310 - the lab hub's own http URL
                f"{self.url}/hub/api{path}", method=method,
                data=json.dumps(body if body is not None else {}).encode(),
                headers={"Authorization": f"token {self.service_token}"})
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
                    return resp.status
            except urllib.error.HTTPError as err:
                return err.code
            except OSError:  # the proxy reloading its routes just after the hub started
                return 0

        def call(method: str, path: str, body: Any = None) -> int:
            deadline = time.monotonic() + 15
            while True:
                status = once(method, path, body)
                if status < 500 and status not in (0, 404) or time.monotonic() > deadline:
                    return status
                time.sleep(0.2)

        for user in users:
            status = call("POST", f"/users/{user}")
            if status not in (201, 409):  # 409: there already
                raise RuntimeError(f"the hub did not create {user} ({status}); see {self.log}")
            if not self.ldap_login:  # LDAP login writes the directory's own at each login
                status = call("PATCH", f"/users/{user}",
                              {"auth_state": directory_identity(self.info, user)})
                if status != 200:
                    raise RuntimeError(f"the hub refused {user}'s auth_state ({status}); see {self.log}")

    def _crypt_key_file(self) -> Path:
        return self.dir / "crypt_key"

    def _crypt_key(self) -> str:
        key = self._crypt_key_file()
        if not key.exists():
            key.write_text(secrets.token_hex(32))
            key.chmod(0o600)
        return key.read_text().strip()

    def kill(self) -> None:
        """SIGKILL the hub alone (its proxy keeps running), as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def proxy_pid(self) -> int | None:
        pid_file = self.dir / "jupyterhub-proxy.pid"
        try:
            return int(pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        """Stop hub and proxy (never the users' jobs: cleanup_servers is off)."""
        pids = []
        if self.proc is not None and self.proc.poll() is None:
            pids.append(self.proc.pid)
        proxy = self.proxy_pid()
        if proxy and pid_alive(proxy):
            pids.append(proxy)
        stop_pids(pids, grace=5)
        if self.proc is not None:
            self.proc.wait()

    def drop_database(self) -> None:
        """Remove the hub's PostgreSQL database (with its state directory, when it is done for);
        SQLite's file goes with the directory."""
        if self.database == "postgresql":
            from gateway.lab import postgres

            postgres.drop_database(self.info, database_name(self.dir))
