"""`hpcgate deploy-files`: everything a site installs for a hub that does not run as root.

    hpcgate deploy-files --policy /etc/hpcgate/site.yaml --out DIR

writes, from the site policy (the one source of settings):

- `jupyterhub_config.py`: authenticator, spawner, proxy, database, TLS, cookie secret and crypt
  key locations, each commented;
- `sudoers` (for /etc/sudoers.d/hpcgate): exactly the commands the hub runs as a user, run as
  members of the policy's groups only (never root), with exactly the policy's environment. No
  shell, no other command. With transport ssh and a service account, it belongs on the login node;
  with per-user keys no sudo is needed and no file is written;
- `hpcgate-hub.service`: the hub's systemd unit, hardened as far as the transport allows;
- with connection mode reverse: the tunnel endpoint's `tunnel_sshd_config` and its systemd units
  (see gateway/tunnel/sitefiles.py), whose sshd asks the hub's keys file through
  `AuthorizedKeysCommand`;
- `CHECKLIST.md`: what to do with them, in order.

The lab (gateway/lab/hub.py) installs the same sudoers text for its unprivileged hub, so every
end-to-end test exercises exactly these rules.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from gateway.policy.model import SitePolicy

HUB_USER = "hpcgate-hub"

# What the hub runs as a user, beyond the scheduler's own commands (gateway/hub/spawner.py,
# gateway/hub/sessions_api.py). "*" stands for arguments the hub fills in at run time.
JOB_FILE_COMMANDS: tuple[tuple[str, ...], ...] = (
    ("{python}", "-m", "gateway.job.launcher", "--write", "*"),  # the launch file, as the user
    ("{python}", "-m", "gateway.depots.size", "--time-limit", "*"),  # a depot's size, as a member
    ("tail", "-n", "*", "*"),  # the last lines of a job that ended while starting
    ("tail", "-c", "*", "*"),  # the job log on the sessions page
)

# The scheduler's commands that run as the user (the job must be theirs); every query of the
# hub (squeue, sinfo, scontrol, qstat) runs as the hub's own account, without sudo.
# tests/unit/test_deploy_files.py checks these against the adapters' builders.
SCHEDULER_USER_COMMANDS: dict[str, tuple[tuple[str, ...], ...]] = {
    "slurm": (("sbatch", "--parsable"), ("scancel", "*")),
    "pbs": (("qsub",), ("qdel", "*")),
}

ENV = "/usr/bin/env"
# A sudoers word may hold these; anything else (a space above all) cannot be pinned exactly.
_SUDOERS_SAFE = re.compile(r"^[A-Za-z0-9_./:,=@+%-]*$")


class DeployError(ValueError):
    """The policy cannot be turned into site files; the message says what to change."""


@dataclass(frozen=True)
class Layout:
    """Where the installed files and the hub's state live on the hub host."""

    etc: str = "/etc/hpcgate"
    state: str = "/var/lib/hpcgate-hub"
    venv: str = "/opt/hpcgate/venv"
    hub_user: str = HUB_USER
    public_url: str = "https://jupyter.example.org/"
    policy_name: str = "site.yaml"

    @property
    def policy(self) -> str:
        return f"{self.etc}/{self.policy_name}"

    @property
    def tunnel_keys(self) -> str:
        """The tunnel account's keys file in reverse mode: the hub's own, in its state dir."""
        return f"{self.state}/tunnel/authorized_keys"


def _sudoers_word(value: str, what: str) -> str:
    if not _SUDOERS_SAFE.match(value):
        raise DeployError(f"{what} {value!r} cannot be pinned in sudoers: use letters, digits "
                          "and / . _ - : , = @ + % only (no spaces, no wildcards)")
    # sudoers needs these escaped inside command arguments.
    return re.sub(r"([\\,:=])", r"\\\1", value)


def command_env(policy: SitePolicy) -> dict[str, str]:
    """The environment the runner passes through `env`, in its order (schedulers/runners.py:
    PATH first, then the cluster's variables)."""
    from gateway.hub.scheduling import scheduler_settings

    return dict(scheduler_settings(policy.cluster).command_env)


def user_commands(policy: SitePolicy) -> list[tuple[str, ...]]:
    """Each argv pattern the hub runs as a user under this policy ("*": filled in at run time)."""
    commands: list[tuple[str, ...]] = []
    if policy.cluster.transport != "rest":  # slurmrestd submits and cancels itself
        commands += SCHEDULER_USER_COMMANDS[policy.cluster.scheduler]
    commands += [tuple(a.format(python=policy.job.python) for a in c) for c in JOB_FILE_COMMANDS]
    return commands


def sudo_runs_as(policy: SitePolicy) -> str | None:
    """Who runs the commands with sudo, and where: None when no sudo is used at all."""
    transport = policy.cluster.transport
    if transport in ("sudo", "rest"):
        return "hub"
    if transport == "ssh" and policy.cluster.ssh and not policy.cluster.ssh.key_template:
        return "login-node"
    return None


def sudoers(policy: SitePolicy, sudo_user: str, source: str = "site.yaml") -> str:
    """The sudoers text: `sudo_user` may run exactly `user_commands(policy)`, through
    `/usr/bin/env` with the policy's environment pinned word for word, as a member of one of
    the policy's groups and never as root. `*` in an argument list matches any arguments (the
    job ids, a line count and a file): each command still runs with the user's rights only."""
    groups = sorted(policy.groups)
    if not groups:
        raise DeployError("the policy has no groups: nobody could start a server")
    env = " ".join(f"{_sudoers_word(k, 'variable')}\\={_sudoers_word(v, k)}"
                   for k, v in command_env(policy).items())
    lines = []
    for argv in user_commands(policy):
        words = [a if a == "*" else _sudoers_word(a, "command word") for a in argv]
        lines.append(f"{ENV} {env} {' '.join(words)}")
    runas = ", ".join([*(f"%{_sudoers_word(g, 'group')}" for g in groups), "!root"])
    cmnds = ", \\\n    ".join(lines)
    return f"""# sudoers rules for hpcgate; made by `hpcgate deploy-files` from {source}.
# Install: install -m 0440 -o root -g root sudoers /etc/sudoers.d/hpcgate
#          visudo -cf /etc/sudoers.d/hpcgate
#
# {sudo_user} (the hub's account) may run the commands below and nothing else:
#   - only as a member of the policy's groups ({", ".join(groups)}); never as root;
#   - only through {ENV} with exactly the environment the policy names (cluster.environment
#     and cluster.command_path), so the scheduler finds its configuration and nothing else
#     of the hub's environment reaches the command;
#   - no shell, no editor, no interpreter but the job's own launcher module.
# A `*` stands for the arguments the hub fills in (job ids, a line count, a file name).
# Regenerate this file whenever the policy's groups, environment or job.python change.

# One rule, without aliases: several such files (hubs of several policies) may coexist in
# /etc/sudoers.d, and an alias defined twice would be an error there.

Defaults:{sudo_user} env_reset, !setenv, !requiretty, !lecture

{sudo_user} ALL = ({runas}) NOPASSWD: \\
    {cmnds}
"""


def _tls(layout: Layout) -> tuple[str, str]:
    return f"{layout.etc}/tls/hub.crt", f"{layout.etc}/tls/hub.key"


def jupyterhub_config(policy: SitePolicy, layout: Layout, source: str = "site.yaml") -> str:
    """The hub's jupyterhub_config.py for this policy."""
    url = urlsplit(layout.public_url)
    https = url.scheme == "https"
    cert, key = _tls(layout)
    api = urlsplit(policy.connection.hub_api_url or "http://127.0.0.1:8081/hub/api")
    hub_bind = f"http://{api.hostname}:{api.port or 80}"
    directory = policy.directory
    auth = ""
    if directory is not None:
        allowed = sorted(policy.groups)
        # The whole tree under the directory's suffix (the dc= part of the service DN): narrow it
        # to your people's subtree if the directory is large.
        people = ",".join(r for r in directory.bind_dn.split(",") if r.strip().lower().startswith("dc="))
        auth = f"""
# --- Login: search-then-bind against the site's directory (the policy's `directory`).
c.JupyterHub.authenticator_class = "hpcgate-ldap"
c.LDAPAuthenticator.server_urls = [{directory.uri!r}]
c.LDAPAuthenticator.start_tls = {directory.start_tls!r}
c.LDAPAuthenticator.tls_ca_file = {directory.ca_cert or ''!r}
c.LDAPAuthenticator.service_dn = {directory.bind_dn!r}
# The service account's password arrives as a systemd credential (hpcgate-hub.service:
# LoadCredential): the hub account never reads {directory.bind_password_file} itself.
c.LDAPAuthenticator.service_password = _credential("ldap-password")
# Where people are searched (by uid, in the whole subtree).
c.LDAPAuthenticator.user_search_base = {people!r}
c.LDAPAuthenticator.group_search_base = {directory.group_base_dn or ''!r}
# Only members of the policy's groups log in (the same groups sudoers lets the hub act for).
c.LDAPAuthenticator.allowed_groups = {{{", ".join(repr(g) for g in allowed)}}}
c.Authenticator.enable_auth_state = True
"""
    tls = (f"""# TLS towards browsers: the key must be readable by {layout.hub_user} (the proxy is its
# child). A port below 1024 needs CAP_NET_BIND_SERVICE: the unit grants that one capability.
c.JupyterHub.ssl_cert = {cert!r}
c.JupyterHub.ssl_key = {key!r}
""" if https else "# Plain HTTP: put a TLS-terminating proxy of the site in front of this one.\n")
    return f"""# jupyterhub_config.py for the cluster {policy.cluster.name!r}; made by
# `hpcgate deploy-files` from {source}. Install it as {layout.etc}/jupyterhub_config.py
# (root:{layout.hub_user}, 0640). The hub runs as {layout.hub_user}, never as root: see
# hpcgate-hub.service and the sudoers file next to this one.
import os
from pathlib import Path

c = get_config()  # noqa: F821


def _credential(name: str) -> str:
    \"\"\"A secret systemd handed to the hub (LoadCredential=), readable by the hub alone.\"\"\"
    where = os.environ.get("CREDENTIALS_DIRECTORY")
    return Path(where, name).read_text().strip() if where else ""


# --- Where users come in: the proxy, hpcgate-nginx, started by the hub as its own child.
c.JupyterHub.bind_url = {layout.public_url!r}
{tls}c.JupyterHub.proxy_class = "hpcgate-nginx"
c.NginxProxy.state_dir = {layout.state + '/nginx'!r}
c.NginxProxy.pid_file = {layout.state + '/jupyterhub-proxy.pid'!r}

# --- The hub's API, where jobs' launchers report: the policy's connection.hub_api_url.
# In reverse mode that is a loopback address, reached through each job's tunnel.
c.JupyterHub.hub_bind_url = {hub_bind!r}

# --- State: all of it in the hub's own state directory (systemd's StateDirectory=).
c.JupyterHub.db_url = "sqlite:///{layout.state}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = {layout.state + '/jupyterhub_cookie_secret'!r}
c.JupyterHub.pid_file = {layout.state + '/jupyterhub.pid'!r}
c.ActivityStore.db_path = {layout.state + '/hpcgate-activity.sqlite'!r}
# auth_state (the user's Unix identity) is encrypted with this key: LoadCredential=crypt-key.
if _credential("crypt-key"):
    os.environ["JUPYTERHUB_CRYPT_KEY"] = _credential("crypt-key")
# Jobs outlive a hub restart (an upgrade): the hub finds them again in its database.
c.JupyterHub.cleanup_servers = False
{auth}
# --- hpcgate: the spawner, its site policy (checked here: a bad policy stops the hub with the
# reason) and hpcgate's pages and APIs.
from gateway.hub import configure  # noqa: E402

configure(c, {layout.policy!r})
c.BatchSpawner.default_url = "/lab"
"""


def hub_unit(policy: SitePolicy, layout: Layout) -> str:
    """hpcgate-hub.service: the hub as `layout.hub_user`, hardened as far as sudo allows."""
    sudo = sudo_runs_as(policy) == "hub"
    port = urlsplit(layout.public_url).port or (443 if layout.public_url.startswith("https") else 80)
    creds = ["crypt-key:" + f"{layout.etc}/crypt_key"]
    if policy.directory is not None:
        creds.append(f"ldap-password:{policy.directory.bind_password_file}")
    cred_lines = "".join(f"LoadCredential={c}\n" for c in creds)
    caps = ("# The public port is below 1024: that one capability, nothing else.\n"
            "AmbientCapabilities=CAP_NET_BIND_SERVICE\n" if port < 1024 else "")
    if sudo:
        hardening = """# sudo is setuid: NoNewPrivileges would stop it, and so would each setting implying it
# for a unit with User= (PrivateDevices, ProtectKernel*, ProtectClock, RestrictAddressFamilies,
# RestrictRealtime, LockPersonality, RestrictSUIDSGID, SystemCallFilter): only mount namespace
# settings here. The users' commands run in this namespace (the launcher writes into their
# working directories), so /home stays visible; /usr, /boot and /etc are read-only.
NoNewPrivileges=no
ProtectSystem=full
PrivateTmp=yes
ProtectControlGroups=yes
"""
    else:
        hardening = """NoNewPrivileges=yes
RestrictSUIDSGID=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
LockPersonality=yes
RestrictRealtime=yes
RestrictNamespaces=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
SystemCallArchitectures=native
"""
    if layout.state.startswith("/var/lib/"):
        state = (f"# {layout.state}, the hub's own: database, cookie secret, proxy state, tunnel "
                 f"keys.\nStateDirectory={layout.state.removeprefix('/var/lib/')}\n"
                 "StateDirectoryMode=0750\n")
    else:  # systemd makes state directories under /var/lib only
        state = (f"# {layout.state}, the hub's own (install -d -o {layout.hub_user} -m 0750 it).\n"
                 f"ReadWritePaths={layout.state}\n")
    return f"""# hpcgate-hub.service; made by `hpcgate deploy-files` for the cluster {policy.cluster.name!r}.
# Install: cp hpcgate-hub.service /etc/systemd/system/ && systemctl daemon-reload
#          systemctl enable --now hpcgate-hub
[Unit]
Description=hpcgate notebook portal (JupyterHub as {layout.hub_user}, not root)
After=network-online.target
Wants=network-online.target

[Service]
User={layout.hub_user}
Group={layout.hub_user}
{state}WorkingDirectory={layout.state}
Environment=PATH={layout.venv}/bin:/usr/local/bin:/usr/bin:/bin
Environment=HOME={layout.state}
{cred_lines}ExecStart={layout.venv}/bin/jupyterhub -f {layout.etc}/jupyterhub_config.py
Restart=on-failure
RestartSec=5
UMask=0027
{caps}{hardening}
[Install]
WantedBy=multi-user.target
"""


def checklist(policy: SitePolicy, layout: Layout, files: list[str]) -> str:
    etc, user = layout.etc, layout.hub_user
    where = sudo_runs_as(policy)
    steps = [
        f"Create the hub's account: `useradd --system --home-dir {layout.state} --shell "
        f"/usr/sbin/nologin {user}`. It needs no password, no shell and no group of users.",
        f"Put the policy at {layout.policy} and the files here in {etc}: "
        f"`install -m 0640 -g {user} jupyterhub_config.py {etc}/`.",
        f"Secrets, root's and mode 0600 (systemd hands them to the hub): `openssl rand -hex 32 > "
        f"{etc}/crypt_key`"
        + (f"; the directory service password in {policy.directory.bind_password_file}."
           if policy.directory else "."),
    ]
    if where == "hub":
        steps.append("sudo: `install -m 0440 sudoers /etc/sudoers.d/hpcgate && visudo -cf "
                     "/etc/sudoers.d/hpcgate`. Check that every directory of "
                     f"cluster.command_path ({policy.cluster.command_path}) and "
                     f"{policy.job.python} are root's and not writable by {user}.")
    elif where == "login-node":
        steps.append(f"On the login node: install `sudoers` as /etc/sudoers.d/hpcgate for the "
                     f"service account ({policy.cluster.ssh.service_user if policy.cluster.ssh else ''}).")
    else:
        steps.append("No sudo: each user's commands log in with that user's key on the login node.")
    if policy.connection.mode == "reverse":
        steps.append(f"Reverse tunnels: `useradd --system --shell /usr/sbin/nologin --password '*' "
                     f"{policy.connection.tunnel_user}`, a host key (`ssh-keygen -t ed25519 -N '' -f "
                     f"{etc}/tunnel_host_ed25519_key`), then install tunnel_sshd_config and the two "
                     "units; `sshd -t -f "
                     f"{etc}/tunnel_sshd_config`. Set connection.authorized_keys to "
                     f"{layout.tunnel_keys} (the hub's own file, read by sshd through "
                     "AuthorizedKeysCommand).")
    steps += [
        f"TLS: the certificate and key of {layout.public_url} at {_tls(layout)[0]} and "
        f"{_tls(layout)[1]}, readable by {user}." if layout.public_url.startswith("https")
        else "TLS: terminate it in front of the hub.",
        "Start: `systemctl daemon-reload && systemctl enable --now hpcgate-hub`; `ps -o user= -C "
        f"jupyterhub` says {user}.",
        f"Gate: `hpcgate check-config {layout.policy} --submit-test-job` (as root: it tries the "
        "test user's commands); then log in as an ordinary user and start a server.",
    ]
    body = "".join(f"{i}. {s}\n" for i, s in enumerate(steps, 1))
    return (f"# Installing hpcgate on the hub host of {policy.cluster.name!r}\n\n"
            f"Files made by `hpcgate deploy-files`: {', '.join(sorted(files))}.\n\n{body}")


def deploy_files(policy: SitePolicy, layout: Layout, source: str = "site.yaml") -> dict[str, str]:
    """Every file, by name."""
    from gateway.tunnel.sitefiles import site_files

    files = {"jupyterhub_config.py": jupyterhub_config(policy, layout, source),
             "hpcgate-hub.service": hub_unit(policy, layout)}
    where = sudo_runs_as(policy)
    if where == "hub":
        files["sudoers"] = sudoers(policy, layout.hub_user, source)
    elif where == "login-node" and policy.cluster.ssh and policy.cluster.ssh.service_user:
        files["sudoers"] = sudoers(policy, policy.cluster.ssh.service_user, source).replace(
            "(the hub's account)", "(the login node's service account)")
    conn = policy.connection
    if conn.mode == "reverse" and conn.ssh_host:
        files.update(site_files([(conn.ssh_host, conn.ssh_port)], layout.etc,
                                conn.tunnel_user, keys_file=layout.tunnel_keys,
                                hub_user=layout.hub_user))
    files["CHECKLIST.md"] = checklist(policy, layout, list(files))
    return files


def main(argv: list[str] | None = None) -> int:
    from gateway.policy.load import PolicyFileError, load_policy

    parser = argparse.ArgumentParser(prog="hpcgate deploy-files", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", required=True, type=Path, help="the site policy (YAML)")
    parser.add_argument("--out", required=True, type=Path, help="directory to write the files to")
    parser.add_argument("--etc", default=Layout.etc, help=f"where they will live ({Layout.etc})")
    parser.add_argument("--state-dir", default=Layout.state, help=f"the hub's state ({Layout.state})")
    parser.add_argument("--venv", default=Layout.venv, help=f"the hub's Python environment ({Layout.venv})")
    parser.add_argument("--hub-user", default=HUB_USER, help=f"the hub's account ({HUB_USER})")
    parser.add_argument("--public-url", default=Layout.public_url,
                        help=f"the portal's URL for users ({Layout.public_url})")
    args = parser.parse_args(argv)
    try:
        policy = load_policy(str(args.policy))
    except PolicyFileError as err:
        print(f"hpcgate deploy-files: {err}")
        return 1
    layout = Layout(etc=args.etc.rstrip("/"), state=args.state_dir.rstrip("/"),
                    venv=args.venv.rstrip("/"), hub_user=args.hub_user,
                    public_url=args.public_url, policy_name=args.policy.name)
    try:
        files = deploy_files(policy, layout, args.policy.name)
    except DeployError as err:
        print(f"hpcgate deploy-files: {err}")
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (args.out / name).write_text(text)
        (args.out / name).chmod(0o440 if name == "sudoers" else 0o644)
        print(args.out / name)
    return 0
