"""How the hub's proxy reaches a server in a job: one object per connection mode.

Each mode owns its state and its lifecycle, in the order the spawner calls them:
- `prepare()` before the job is submitted (reverse: a loopback port and the job's key; login-node:
  a loopback port), returning the launch file's `tunnel` section or None;
- `check_report(host, port, node_address)` when the launcher says where it listens;
- `open(host, port)` returns where the proxy routes (login-node: starts the hub's own forward);
- `is_alive()` on each poll (a tunnel down longer than `down_timeout` ends the server);
- `release()` on every ending; `save()` / `connection_from_state()` across hub restarts, and
  `readopt()` once a restarted hub finds the server running.

`make_connection` (from the policy) and `connection_from_state` (from the hub's database) are the
only places that look at the mode's name. The tunnel machinery itself is in gateway/tunnel/.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, ClassVar

from jupyterhub.spawner import SpawnException
from tornado import web

from gateway.hub.api import same_host
from gateway.tunnel import hubside, loginnode

Log = logging.Logger | logging.LoggerAdapter


class ConnectionMode:
    """Direct: the proxy reaches the server on its node's address."""

    mode: ClassVar[str] = "direct"
    checks_node_address: ClassVar[bool] = True
    """Whether check_report() needs the job's node address (reverse: the tunnel's end instead)."""

    def __init__(self, who: str, conn: Any = None, down_timeout: float = 0, log: Log | None = None):
        self.who = who
        """The server, as the hub's log names it."""
        self.log = log or logging.getLogger("hpcgate.connections")
        """The spawner's logger: lines go through the hub's own log format."""
        self.conn = conn
        """The policy's `connection` section (None for a server re-adopted from the database)."""
        self.down_timeout = down_timeout
        self.port = 0
        """The hub-side loopback port of a tunnel or forward (0: none)."""

    async def prepare(self, user: str, server: str, save_state: Callable[[], None]) -> dict | None:
        return None

    def check_report(self, host: str, port: int, node_address: str | None) -> None:
        """HTTPError unless host:port is where this mode's server may listen."""
        # The proxy will route this user's URL there: only the job's own node is acceptable.
        if not node_address or not same_host(host, node_address):
            raise web.HTTPError(403, f"the server must listen on its node's address {node_address}")

    async def open(self, host: str, port: int, timeout: float = 60) -> tuple[str, int]:
        return host, port

    async def is_alive(self) -> bool:
        return True

    async def readopt(self, host: str, port: int) -> tuple[str, int]:
        return host, port

    async def release(self) -> None:
        return None

    def save(self) -> dict[str, Any]:
        return {"connect": self.mode}

    def restore(self, state: dict[str, Any]) -> None:
        return None


class TunnelledMode(ConnectionMode):
    """What reverse and login-node share: a loopback port on the hub host, watched for life."""

    _down_since: float | None = None

    @property
    def is_down(self) -> bool:
        """Whether the last is_alive() found the tunnel down (still within down_timeout)."""
        return self._down_since is not None

    async def is_alive(self) -> bool:
        """False once the tunnel has been down longer than down_timeout (0: never)."""
        now = asyncio.get_running_loop().time()
        if await hubside.port_answers(self.port):
            if self._down_since is not None:
                self.log.info("The tunnel of %s is back", self.who)
            self._down_since = None
            return True
        if self._down_since is None:
            self._down_since = now
            self.log.warning("The SSH tunnel of %s (port %s) is down; its ssh is reconnecting",
                        self.who, self.port)
        down = now - self._down_since
        if self.down_timeout and down >= self.down_timeout:
            self.log.error("The SSH tunnel of %s has been down for %.0f s: the server is unreachable "
                      "and is treated as stopped (its job will be cancelled)", self.who, down)
            return False
        return True

    def save(self) -> dict[str, Any]:
        return {**super().save(), "tunnel_port": self.port}

    def restore(self, state: dict[str, Any]) -> None:
        self.port = state.get("tunnel_port", 0)
        hubside.claim(self.port)  # never handed to another server while this one lives


class ReverseMode(TunnelledMode):
    """The job opens an SSH tunnel back to the hub host; the proxy routes to its loopback end."""

    mode: ClassVar[str] = "reverse"
    checks_node_address: ClassVar[bool] = False

    def __init__(self, who: str, conn: Any = None, down_timeout: float = 0, log: Log | None = None,
                 hub_api_url: str = ""):
        super().__init__(who, conn, down_timeout, log)
        self.hub_api_url = hub_api_url
        self.tag = ""
        """Which line of authorized_keys is this server's."""
        self.keys_file = ""

    async def prepare(self, user: str, server: str, save_state: Callable[[], None]) -> dict | None:
        """Claim the job's loopback port and install its restricted key. The tag is saved in the
        hub's state first, so a hub that dies in between still knows whose line it is."""
        try:
            settings = hubside.settings_from(self.conn, self.hub_api_url)
        except hubside.TunnelConfigError as err:
            raise SpawnException("This hub's reverse tunnels are not fully configured; please "
                                 "tell an administrator.", reason="connection-mode",
                                 log_message=str(err)) from err
        if self.tag:  # a start the hub died in left a line behind: remove it first
            await self.release()
        self.tag = hubside.make_tag(user, server)
        self.keys_file = settings.authorized_keys
        save_state()
        try:
            section = await asyncio.to_thread(hubside.prepare, settings, self.tag)
        except hubside.TunnelConfigError as err:
            raise SpawnException(f"No tunnel could be set up: {err}.", reason="tunnel") from err
        except (OSError, ValueError) as err:
            raise SpawnException("Your server's tunnel could not be prepared; please tell an "
                                 "administrator.", reason="tunnel",
                                 log_message=f"tunnel for {self.who}: {err}") from err
        self.port = section["remote_port"]
        return section

    def check_report(self, host: str, port: int, node_address: str | None) -> None:
        # The report came through the job's own tunnel (its key may open nothing else), and the
        # address is the tunnel's hub-side end, chosen by the hub: nothing else is accepted.
        if not self.port or (host, port) != ("127.0.0.1", self.port):
            raise web.HTTPError(403, "in reverse mode the server must report its tunnel's end "
                                     f"127.0.0.1:{self.port}")

    async def release(self) -> None:
        if not (self.tag or self.port):
            return
        try:
            await asyncio.to_thread(hubside.release, self.keys_file, self.tag, self.port)
        except (OSError, ValueError) as err:
            self.log.error("Could not remove the tunnel key %s of %s from %s: %s", self.tag, self.who,
                      self.keys_file, err)
            return
        self.tag = ""

    def save(self) -> dict[str, Any]:
        return {**super().save(), "tunnel_tag": self.tag, "tunnel_keys_file": self.keys_file}

    def restore(self, state: dict[str, Any]) -> None:
        super().restore(state)
        self.tag = state.get("tunnel_tag", "")
        self.keys_file = state.get("tunnel_keys_file", "")


class LoginNodeMode(TunnelledMode):
    """The hub runs its own supervised `ssh -L` through a login node to the server's node."""

    mode: ClassVar[str] = "login-node"

    def __init__(self, who: str, conn: Any = None, down_timeout: float = 0, log: Log | None = None):
        super().__init__(who, conn, down_timeout, log)
        self._supervisor: loginnode.ForwardSupervisor | None = None
        self._target: tuple[str, int] | None = None

    def _settings(self) -> loginnode.LoginNodeSettings:
        try:
            return loginnode.settings_from(self.conn)
        except (loginnode.TunnelConfigError, AttributeError) as err:
            raise SpawnException("This hub's login-node connections are not fully configured; "
                                 "please tell an administrator.", reason="connection-mode",
                                 log_message=str(err)) from err

    async def prepare(self, user: str, server: str, save_state: Callable[[], None]) -> dict | None:
        """Check the site's key and known_hosts and claim the server's loopback port P (saved in
        the state before submit, so a restarted hub makes the forward on the same P)."""
        try:
            self.port = await asyncio.to_thread(loginnode.prepare, self._settings())
        except hubside.TunnelConfigError as err:
            raise SpawnException("Your server's connection through the login node could not be "
                                 "prepared; please tell an administrator.", reason="tunnel",
                                 log_message=f"login node for {self.who}: {err}") from err
        return None  # the launcher binds and reports as in direct mode

    def _forward(self, host: str, port: int) -> loginnode.ForwardSupervisor:
        if self._supervisor is None or self._target != (host, port):
            argv = self._settings().argv(self.port, host, port)
            who, log = self.who, self.log
            self._supervisor = loginnode.ForwardSupervisor(
                argv, self.port, log=lambda line: log.info("login node %s: %s", who, line))
            self._target = (host, port)
        return self._supervisor

    async def open(self, host: str, port: int, timeout: float = 60) -> tuple[str, int]:
        try:
            await self._forward(host, port).start().wait_ready(timeout)
        except loginnode.ForwardError as err:
            raise SpawnException(
                "Your server started, but the hub cannot reach it through the login node; "
                "please tell an administrator.", reason="tunnel",
                log_message=f"login node forward for {self.who}: {err}") from err
        return "127.0.0.1", self.port

    async def is_alive(self) -> bool:
        if self._target is not None:
            self._forward(*self._target).start()  # made again after a hub restart
        return await super().is_alive()

    async def readopt(self, host: str, port: int) -> tuple[str, int]:
        """After a hub restart: the forward again on the same P; the route stays."""
        try:
            await self._forward(host, port).start().wait_ready(30)
        except (loginnode.ForwardError, SpawnException) as err:  # the hub's start-up must go on
            self.log.error("The forward of %s through the login node is not up yet (still "
                      "retrying): %s", self.who, err)
        return "127.0.0.1", self.port

    async def release(self) -> None:
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            await supervisor.stop()
        hubside.unclaim(self.port)


_MODES: dict[str, type[ConnectionMode]] = {m.mode: m for m in (ConnectionMode, ReverseMode,
                                                               LoginNodeMode)}


def make_connection(who: str, conn: Any, hub_api_url: str, log: Log | None = None) -> ConnectionMode:
    """The mode the policy's `connection` section asks for, for a new server."""
    cls = _MODES[conn.mode]
    if cls is ReverseMode:
        return ReverseMode(who, conn, conn.down_timeout, log, hub_api_url)
    return cls(who, conn, conn.down_timeout, log)


def connection_from_state(who: str, state: dict[str, Any], conn: Any = None,
                          log: Log | None = None) -> ConnectionMode:
    """The mode a server was started with, from the hub's database (the policy may have changed
    since: a running server keeps its mode). `conn` is the current policy section, if any."""
    cls = _MODES.get(state.get("connect", "direct"), ConnectionMode)
    down_timeout = conn.down_timeout if conn is not None else 0
    made = cls(who, conn, down_timeout, log)
    made.restore(state)
    return made
