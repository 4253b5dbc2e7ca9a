"""Pure builders of OpenSSH command lines, and readers of the lines ssh prints with -v.

Nothing here runs a process: the functions take typed values and return argv lists, so they are
tested without SSH. No secret ever goes into an argv: keys are files (mode 0600) named by path.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

# Fastest first (measured); the server picks the first one it also offers.
DEFAULT_CIPHERS = "aes128-gcm@openssh.com,chacha20-poly1305@openssh.com,aes256-gcm@openssh.com"
HOST_KEY_ALIAS = "hpcgate-tunnel-endpoint"


@dataclass(frozen=True)
class ReverseTunnel:
    """What the job's ssh needs: where the hub's sshd is, who to log in as, which ports."""

    ssh_host: str
    ssh_port: int
    ssh_user: str
    remote_port: int  # P: the loopback port on the hub host the proxy routes to
    server_port: int  # the notebook server's port on the node's loopback
    api_local_socket: str  # where the hub API appears on the node: a Unix socket in a 0700 dir
    hub_api_host: str  # the hub API as seen from the hub host
    hub_api_port: int
    ciphers: str = DEFAULT_CIPHERS
    alive_interval: int = 5
    alive_count: int = 3
    connect_timeout: int = 10


@dataclass(frozen=True)
class LoginNodeForward:
    """What the hub's ssh needs in login-node mode: the login node, the account and key the site
    gave the hub there, and which node port appears on which loopback port of the hub host."""

    login_host: str
    login_port: int
    login_user: str
    local_port: int  # P: the loopback port on the hub host the proxy routes to
    target_host: str  # the node's address, as the login node reaches it
    target_port: int  # the notebook server's port there
    ciphers: str = DEFAULT_CIPHERS
    alive_interval: int = 5
    alive_count: int = 3
    connect_timeout: int = 10


def common_options(key_file: str, known_hosts: str, ciphers: str, alive_interval: int,
                   alive_count: int, connect_timeout: int,
                   host_key_alias: str | None = HOST_KEY_ALIAS) -> list[str]:
    """Options for a forwarding-only, non-interactive ssh that trusts only the host keys in
    `known_hosts` (under `host_key_alias`, or under the host's own name when it is None)."""
    opts = {
        "BatchMode": "yes",
        "IdentitiesOnly": "yes",
        "IdentityFile": key_file,
        "UserKnownHostsFile": known_hosts,
        "GlobalKnownHostsFile": "/dev/null",
        "StrictHostKeyChecking": "yes",
        **({"HostKeyAlias": host_key_alias} if host_key_alias else {}),
        "UpdateHostKeys": "no",
        "CheckHostIP": "no",
        "ExitOnForwardFailure": "yes",
        "ServerAliveInterval": str(alive_interval),
        "ServerAliveCountMax": str(alive_count),
        "ConnectTimeout": str(connect_timeout),
        "ControlMaster": "no",
        "ControlPath": "none",
        "ForwardAgent": "no",
        "ForwardX11": "no",
        "PermitLocalCommand": "no",
        "Ciphers": ciphers,
        "LogLevel": "DEBUG1",  # the forward confirmations are debug1 lines
    }
    argv = ["-N", "-T", "-F", "/dev/null"]
    for name, value in opts.items():
        argv += ["-o", f"{name}={value}"]
    return argv


def reverse_argv(t: ReverseTunnel, key_file: str, known_hosts: str, ssh: str = "ssh") -> list[str]:
    """`ssh -N -R 127.0.0.1:P:127.0.0.1:server -L SOCKET:hub_api ...` run in the job.

    The hub API's end on the node is a Unix socket, not a loopback port: any user on a shared
    node can open a port on 127.0.0.1, but only the job's user can enter the socket's 0700
    directory (and ssh makes the socket itself 0600). A socket left by an ssh that died is
    replaced (StreamLocalBindUnlink), so a reconnect does not fail on it."""
    return [
        ssh, *common_options(key_file, known_hosts, t.ciphers, t.alive_interval, t.alive_count,
                             t.connect_timeout),
        "-o", "StreamLocalBindUnlink=yes",
        "-p", str(t.ssh_port), "-l", t.ssh_user,
        "-R", f"127.0.0.1:{t.remote_port}:127.0.0.1:{t.server_port}",
        "-L", f"{t.api_local_socket}:{_bracket(t.hub_api_host)}:{t.hub_api_port}",
        "--", t.ssh_host,
    ]


def login_node_argv(f: LoginNodeForward, key_file: str, known_hosts: str,
                    ssh: str = "ssh") -> list[str]:
    """`ssh -N -L 127.0.0.1:P:node:port -l user -- login` run by the hub. The login node's key
    is looked up under its own name in the site's known_hosts file (no alias)."""
    return [
        ssh, *common_options(key_file, known_hosts, f.ciphers, f.alive_interval, f.alive_count,
                             f.connect_timeout, host_key_alias=None),
        "-p", str(f.login_port), "-l", f.login_user,
        "-L", f"127.0.0.1:{f.local_port}:{_bracket(f.target_host)}:{f.target_port}",
        "--", f.login_host,
    ]


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def known_hosts_text(host_keys: list[str]) -> str:
    """A known_hosts file pinning the endpoint's keys ("ssh-ed25519 AAAA...") under the alias."""
    return "".join(f"{HOST_KEY_ALIAS} {key}\n" for key in host_keys)


def host_keys_for(known_hosts: str, host: str, port: int) -> list[str]:
    """The "type base64" keys a known_hosts text lists for host:port (plain, not hashed, names)."""
    wanted = {f"[{host}]:{port}"} | ({host} if port == 22 else set())
    keys = []
    for line in known_hosts.splitlines():
        fields = line.split()
        if len(fields) >= 3 and not line.startswith(("#", "@")) and \
                wanted & set(fields[0].split(",")):
            keys.append(f"{fields[1]} {fields[2]}")
    return keys


# -- what ssh -v prints ------------------------------------------------------------------------

_REMOTE_OK = re.compile(r"remote forward success for: listen (?:[^ ]*:)?(\d+), connect")
_REMOTE_FAIL = re.compile(r"(?:remote forward failure for: listen (?:[^ ]*:)?(\d+)|"
                          r"remote port forwarding failed for listen port (\d+))")
_LOCAL_OK = re.compile(r"Local forwarding listening on \S+ port (\d+)\.")
_LOCAL_PATH_OK = re.compile(r"Local forwarding listening on path (\S+)\.$")
_LOCAL_FAIL = re.compile(r"(?:bind \[?[^ ]*\]?:(\d+): |"
                         r"Could not request local forwarding|cannot listen to port: (\d+))")


@dataclass(frozen=True)
class SshEvent:
    kind: str  # "remote-ok", "remote-failed", "local-ok", "local-failed"
    port: int | str  # a port, or the path of a Unix socket


def parse_line(line: str) -> SshEvent | None:
    """One stderr line of `ssh -v` as a forwarding event, or None."""
    if m := _REMOTE_OK.search(line):
        return SshEvent("remote-ok", int(m.group(1)))
    if m := _REMOTE_FAIL.search(line):
        return SshEvent("remote-failed", int(m.group(1) or m.group(2)))
    if m := _LOCAL_PATH_OK.search(line):
        return SshEvent("local-ok", m.group(1))
    if m := _LOCAL_OK.search(line):
        return SshEvent("local-ok", int(m.group(1)))
    if m := _LOCAL_FAIL.search(line):
        return SshEvent("local-failed", int(m.group(1) or m.group(2) or 0))
    return None


# -- supervising ssh: the parts both supervisors share (job side: client.py, hub: loginnode.py) --


class ForwardWatch:
    """Follows what one ssh process prints: up once every expected forward is confirmed."""

    def __init__(self, expect: set[tuple[str, int | str]]):
        self.expect = frozenset(expect)  # {("remote-ok", P), ("local-ok", L or a socket path)}
        self.confirmed: set[tuple[str, int | str]] = set()
        self.up = False

    def feed(self, line: str) -> str:
        """"up" when this line completes the forwards, "said" when it is worth showing (an error,
        a refused forward, anything ssh prints without -v), "" for debug chatter."""
        event = parse_line(line)
        if event is None:
            return "" if line.startswith("debug1:") else "said"
        if not event.kind.endswith("-ok"):
            return "said"
        self.confirmed.add((event.kind, event.port))
        if not self.up and self.expect <= self.confirmed:
            self.up = True
            return "up"
        return ""


@dataclass
class Backoff:
    """Delays between ssh restarts: `first`, doubling up to `maximum` while attempts fail.

    A connection whose forwards came up resets the delay to `first`: an endpoint restarted
    twice in a row must find tunnels reconnecting at once, not waiting out the doubling of the
    first restart's failed attempts. A connection that stayed up less than `stable_after`
    seconds resets it only `brief_ups_forgiven` times within `stable_after` seconds: a server
    that drops every connection at once is not hammered (the delay keeps doubling)."""

    first: float = 0.2
    maximum: float = 30.0
    stable_after: float = 30.0
    clock: Callable[[], float] = time.monotonic
    delay: float = field(init=False)
    brief_ups: list[float] = field(init=False, default_factory=list)
    brief_ups_forgiven: ClassVar[int] = 3

    def __post_init__(self) -> None:
        self.delay = self.first

    def after_exit(self, was_up: bool, ran_for: float) -> float:
        """The wait before the next attempt, given how the last one went."""
        if was_up and ran_for >= self.stable_after:
            self.delay = self.first
        elif was_up:
            now = self.clock()
            self.brief_ups = [t for t in self.brief_ups if now - t < self.stable_after] + [now]
            if len(self.brief_ups) <= self.brief_ups_forgiven:
                self.delay = self.first
        wait = self.delay
        self.delay = min(self.delay * 2, self.maximum)
        return wait


def free_loopback_port() -> int:
    """A port free on 127.0.0.1 right now (for a forward's local end)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
