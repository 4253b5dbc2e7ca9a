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
import collections
import contextlib
import ctypes
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.tunnel import hubside
from gateway.tunnel.hubside import TunnelConfigError
from gateway.tunnel.sshargs import (
    DEFAULT_CIPHERS,
    Backoff,
    ForwardWatch,
    LoginNodeForward,
    free_loopback_port,
    login_node_argv,
)

Log = Callable[[str], None]
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


class ForwardSupervisor:
    """Keep one `ssh -L` running for one server; `up` is set while its forward listens."""

    def __init__(self, argv: list[str], local_port: int, log: Log,
                 backoff: Backoff | None = None):
        self.argv = argv
        self.local_port = local_port
        self.log = log
        self.backoff = backoff or Backoff()
        self.up = asyncio.Event()
        self.proc: asyncio.subprocess.Process | None = None
        self.attempts = 0
        self.connects = 0
        self.tail: collections.deque[str] = collections.deque(maxlen=12)
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> ForwardSupervisor:
        if not self.running:
            self._stopping = False
            self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def wait_ready(self, timeout: float, give_up_after: int = 4) -> None:
        """Return once the forward listens; ForwardError after `timeout` seconds, or after
        `give_up_after` attempts that never came up (refused key, unknown host key...)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.up.is_set():
            failed = self.connects == 0 and self.attempts >= give_up_after and not self._alive()
            if loop.time() > deadline or failed or not self.running:
                said = " | ".join(self.tail) or "nothing"
                raise ForwardError(f"the SSH forward through the login node could not be opened "
                                   f"after {self.attempts} attempts; ssh said: {said}")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.up.wait(), 0.05)

    async def stop(self) -> None:
        """End the supervision and the ssh process (terminate, then kill after 5 s)."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._end_process()
        self.up.clear()

    def _alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def _end_process(self) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while not self._stopping:
                self.attempts += 1
                started = loop.time()
                was_up = await self._run_once()
                self.up.clear()
                if self._stopping:
                    return
                delay = self.backoff.after_exit(was_up, loop.time() - started)
                code = self.proc.returncode if self.proc else "?"
                self.log(f"ssh exited ({code}); reconnecting in {delay:.1f} s")
                await asyncio.sleep(delay)
        finally:
            await asyncio.shield(self._end_process())

    async def _run_once(self) -> bool:
        """Run one ssh until it exits; True if its forward was ever up."""
        watch = ForwardWatch({("local-ok", self.local_port)})
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE, preexec_fn=_die_with_parent)
        except OSError as err:
            self.tail.append(f"cannot run ssh: {err}")
            self.log(self.tail[-1])
            return False
        self.proc = proc
        assert proc.stderr is not None
        async for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            seen = watch.feed(line)
            if seen == "up":
                self.connects += 1
                self.up.set()
                self.log(f"forward 127.0.0.1:{self.local_port} up (connection {self.connects}, "
                         f"ssh pid {proc.pid})")
            elif seen == "said":
                self.tail.append(line)
                self.log(line)
        await proc.wait()
        return watch.up


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
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", local_port), 5)
        try:
            banner = await asyncio.wait_for(reader.readline(), 5)
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
