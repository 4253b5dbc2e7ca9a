"""The hub's side of login-node mode: a supervised `ssh -L` through a login node to the job.

The job's launcher binds on its node's address and reports it exactly as in direct mode. The hub
cannot reach that address itself, but a login node can: the hub runs one OpenSSH client per
server, `ssh -N -L 127.0.0.1:P:<node>:<port> <user>@<login node>`, with the key and the pinned
known_hosts file the site configured, and the proxy routes the user's URL to http://127.0.0.1:P.

`ForwardSupervisor` runs that ssh as an asyncio subprocess (nothing here blocks the hub's event
loop), calls the forward up only when ssh has printed that it listens (after authentication, the
same `ssh -v` reader as the job's reverse tunnel), and restarts it with the same back-off when it
dies. The ssh dies with the hub (PR_SET_PDEATHSIG): a restarted hub makes a new one on the same P.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
from dataclasses import dataclass
from typing import Any

from gateway.tunnel import hubside
from gateway.tunnel.hubside import TunnelConfigError
from gateway.tunnel.sshargs import (
    DEFAULT_CIPHERS,
    Backoff,
    LoginNodeForward,
    free_loopback_port,
    login_node_argv,
)
from gateway.tunnel.supervisor import Log, SshSupervisor

_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here: the forked child only calls prctl


class ForwardError(RuntimeError):
    """The forward could not be opened; the message holds what ssh said."""


@dataclass(frozen=True)
class LoginNodeSettings:
    """The site's settings for login-node mode (policy `connection` section or spawner traits)."""

    host: str
    port: int
    user: str
    key_file: str
    known_hosts: str
    ports: tuple[int, int]
    ciphers: str = DEFAULT_CIPHERS
    alive_interval: int = 5
    ssh: str = "ssh"

    def forward(self, local_port: int, node: str, node_port: int) -> LoginNodeForward:
        return LoginNodeForward(login_host=self.host, login_port=self.port, login_user=self.user,
                                local_port=local_port, target_host=node, target_port=node_port,
                                ciphers=self.ciphers, alive_interval=self.alive_interval)

    def argv(self, local_port: int, node: str, node_port: int) -> list[str]:
        return login_node_argv(self.forward(local_port, node, node_port), self.key_file,
                               self.known_hosts, ssh=self.ssh)


def settings_from(conn: Any) -> LoginNodeSettings:
    """The settings from the policy's `connection` section. TunnelConfigError names what is
    missing (the policy's own check says so too, when the file is loaded)."""
    values = {"ssh_host": conn.ssh_host, "login_node_user": conn.login_node_user,
              "login_node_key": conn.login_node_key, "known_hosts": conn.known_hosts}
    missing = [name for name, value in values.items() if not value]
    if missing:
        raise TunnelConfigError(f"login-node mode needs {', '.join(missing)} (the login node, the "
                                "account and key the hub uses there, the login node's host key)")
    return LoginNodeSettings(
        host=conn.ssh_host, port=conn.ssh_port, user=conn.login_node_user,
        key_file=conn.login_node_key, known_hosts=conn.known_hosts,
        ports=(conn.first_port, conn.last_port), ciphers=conn.ciphers or DEFAULT_CIPHERS)


def check_files(settings: LoginNodeSettings) -> None:
    """TunnelConfigError unless the key and known_hosts files can be read (blocking: call it in
    a thread). The key must not be readable by others: ssh would refuse it."""
    for what, path in (("key", settings.key_file), ("known_hosts file", settings.known_hosts)):
        try:
            with open(path, "rb"):
                pass
        except OSError as err:
            raise TunnelConfigError(f"cannot read the login node {what} {path}: "
                                    f"{err.strerror}") from err
    mode = os.stat(settings.key_file).st_mode
    if mode & 0o077:
        raise TunnelConfigError(f"the login node key {settings.key_file} is readable by others "
                                f"(mode {mode & 0o777:o}); ssh refuses it: chmod 600 it")


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the hub process goes away (even by SIGKILL)."""
    with contextlib.suppress(AttributeError):
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class ForwardSupervisor(SshSupervisor):
    """Keep one `ssh -L` running for one server; `up` is set while its forward listens. The ssh
    dies with the hub (PR_SET_PDEATHSIG): a restarted hub makes a new one on the same port."""

    def __init__(self, argv: list[str], local_port: int, log: Log,
                 backoff: Backoff | None = None):
        super().__init__(argv, {("local-ok", local_port)}, log, backoff, error=ForwardError,
                         what="the SSH forward through the login node", preexec=_die_with_parent)
        self.local_port = local_port

    def _up_line(self, pid: int) -> str:
        return (f"forward 127.0.0.1:{self.local_port} up (connection {self.connects}, "
                f"ssh pid {pid})")


async def open_forward(settings: LoginNodeSettings, local_port: int, node: str, node_port: int,
                       log: Log, timeout: float = 60) -> ForwardSupervisor:
    """Start the supervised forward 127.0.0.1:local_port -> node:node_port and wait until it
    listens. On failure the ssh is stopped and ForwardError raised."""
    supervisor = ForwardSupervisor(settings.argv(local_port, node, node_port), local_port,
                                   log).start()
    try:
        await supervisor.wait_ready(timeout)
    except BaseException:
        await supervisor.stop()
        raise
    return supervisor


def prepare(settings: LoginNodeSettings) -> int:
    """Check the site's key and known_hosts and claim a free loopback port P on the hub host for
    one server's forward (the same bookkeeping as reverse mode's ports, so the two never hand
    out one port twice). Blocking (reads files, binds test sockets): run it in a thread."""
    check_files(settings)
    return hubside.allocate_port(settings.ports)


async def probe(settings: LoginNodeSettings, timeout: float = 30) -> str:
    """Do what the hub does for a server, once, for `hpcgate check-config`: log in to the login
    node with the site's key and pinned host key, open a forward through it to the login node's
    own SSH port, and connect through it. TunnelConfigError or ForwardError when the login or the
    forward fails; otherwise "" when the SSH banner came back through the forward, or a sentence
    saying it did not (forwarding refused, or allowed only towards the compute nodes)."""

    await asyncio.to_thread(check_files, settings)
    local_port = free_loopback_port()  # any free port: this forward carries one banner
    supervisor = await open_forward(settings, local_port, "127.0.0.1", settings.port,
                                    log=lambda line: None, timeout=timeout)
    try:
        # Generous waits: a login node under load (or a busy sshd's MaxStartups) answers late,
        # and a late banner is not a refusal.
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", local_port), 15)
        try:
            banner = await asyncio.wait_for(reader.readline(), 15)
        except asyncio.TimeoutError:
            banner = b""
        finally:
            writer.close()
    except (OSError, asyncio.TimeoutError):
        banner = b""
    finally:
        await supervisor.stop()
    if banner.startswith(b"SSH-"):
        return ""
    return (f"a connection through the forward to the login node's own port {settings.port} got "
            "no answer: the login node may refuse forwarding for this account (AllowTcpForwarding, "
            "a restrict line without port-forwarding), or allow it only towards the compute "
            "nodes (PermitOpen), which is enough")
