"""How the hub's proxy reaches a server in a job: direct, reverse SSH tunnel, or via a login node.

`ConnectionModes` is the part of the spawner that picks the mode (the site policy's `connection`
section wins over these settings), prepares the reverse tunnel's key and port or the login node's
forward, and releases them on every ending. The tunnel machinery itself is in gateway/tunnel/.
"""

from __future__ import annotations

import asyncio
from typing import Any

from jupyterhub.spawner import SpawnException
from traitlets import Enum, Float, Int, Tuple, Unicode
from traitlets.config import LoggingConfigurable

from gateway.tunnel.sshargs import DEFAULT_CIPHERS


class ConnectionModes(LoggingConfigurable):
    """Mixed into the spawner, which provides user, name, job and state attributes; configured
    as `c.BatchSpawner.<setting>` (the site policy's `connection` section wins)."""

    connection_mode = Enum(
        ["direct", "reverse", "login-node"], "direct",
        help="How the proxy reaches the server. direct: the node's address. reverse: the job opens "
             "an SSH tunnel back to the hub host and the proxy routes to its loopback end. "
             "login-node: the hub runs `ssh -L` through a login node (tunnel_ssh_host, "
             "login_node_user, login_node_key) and the proxy routes to its loopback end.",
    ).tag(config=True)
    tunnel_ssh_host = Unicode(
        "", help="reverse: the address of the hub host's tunnel endpoint (sshd) as jobs reach it. "
                 "login-node: the login node the hub's forwards go through.",
    ).tag(config=True)
    tunnel_ssh_port = Int(22, help="reverse: the tunnel endpoint's port; login-node: the login "
                                   "node's SSH port.").tag(config=True)
    tunnel_known_hosts = Unicode(
        "", help="reverse: known_hosts file holding the endpoint's host key; jobs are pinned to it. "
                 "login-node: known_hosts file holding the login node's host key.",
    ).tag(config=True)
    login_node_user = Unicode(
        "", help="login-node: the account on the login node the hub's forwards log in as.",
    ).tag(config=True)
    login_node_key = Unicode(
        "", help="login-node: the private key file (mode 0600, readable by the hub) for that "
                 "account; passed to ssh by path, never in its arguments.",
    ).tag(config=True)
    tunnel_user = Unicode(
        "hpcgate-tunnel", help="reverse: the account on the hub host that jobs' tunnels log in as.",
    ).tag(config=True)
    tunnel_authorized_keys = Unicode(
        "", help="reverse: that account's authorized_keys file, which the hub edits (one "
                 "restricted line per running job, removed at stop).",
    ).tag(config=True)
    tunnel_hub_api_url = Unicode(
        "", help="reverse: the hub API as seen from the hub host, forwarded to each job "
                 "(empty: the hub's own API URL).",
    ).tag(config=True)
    tunnel_ports = Tuple(
        Int(), Int(), default_value=(40000, 49999),
        help="reverse and login-node: the range of loopback ports on the hub host given to "
             "tunnels.",
    ).tag(config=True)
    tunnel_ciphers = Unicode(
        DEFAULT_CIPHERS,
        help="reverse and login-node: SSH ciphers offered, fastest first (aes128-gcm measured "
             "fastest).",
    ).tag(config=True)
    tunnel_down_timeout = Float(
        120, help="reverse and login-node: seconds a server's tunnel may stay down (its ssh "
                  "keeps reconnecting) before poll() reports the server gone; 0: never.",
    ).tag(config=True)


    def _connection(self) -> tuple[str, Any]:
        """(mode, tunnel settings or None): the policy's `connection` section, else the traits."""
        from gateway.tunnel.hubside import TunnelSettings

        policy = self.site_policy()
        conn = policy.connection if policy is not None else None
        mode = conn.mode if conn is not None else self.connection_mode
        if mode == "direct":
            return mode, None
        if mode == "login-node":
            return mode, self._login_node_settings(conn)
        host = (conn.ssh_host if conn is not None else None) or self.tunnel_ssh_host
        known_hosts = (conn.known_hosts if conn is not None else None) or self.tunnel_known_hosts
        if not host or not known_hosts or not self.tunnel_authorized_keys:
            raise SpawnException(
                "This hub's reverse tunnels are not fully configured (the SSH endpoint, its "
                "known_hosts and the tunnel account's authorized_keys are needed); please tell "
                "an administrator.", reason="connection-mode")
        api_url = ((conn.hub_api_url if conn is not None else None) or self.tunnel_hub_api_url
                   or self.hub.api_url)
        if api_url.startswith("https:"):
            # The launcher reaches the API through its own forward on the node's loopback, in
            # plain HTTP inside the SSH connection.
            raise SpawnException(
                "This hub's reverse tunnels need an http:// hub API URL (the tunnel encrypts it); "
                "please tell an administrator.", reason="connection-mode")
        return mode, TunnelSettings(
            ssh_host=host, ssh_port=conn.ssh_port if conn is not None else self.tunnel_ssh_port,
            ssh_user=self.tunnel_user, known_hosts=known_hosts,
            authorized_keys=self.tunnel_authorized_keys, hub_api_url=api_url,
            ports=tuple(self.tunnel_ports), ciphers=self.tunnel_ciphers)

    def _login_node_settings(self, conn: Any) -> Any:
        from gateway.tunnel.hubside import TunnelConfigError
        from gateway.tunnel.loginnode import settings_from

        try:
            return settings_from(conn, self)
        except TunnelConfigError as err:
            raise SpawnException(
                "This hub's login-node connections are not fully configured; please tell an "
                "administrator.", reason="connection-mode", log_message=str(err)) from err

    async def _prepare_login_node(self, settings: Any) -> None:
        """Check the site's key and known_hosts and claim the server's loopback port P (saved in
        the state before submit, so a restarted hub makes the forward on the same P)."""
        from gateway.tunnel import hubside, loginnode

        try:
            self.tunnel_port = await asyncio.to_thread(loginnode.prepare, settings)
        except hubside.TunnelConfigError as err:
            raise SpawnException("Your server's connection through the login node could not be "
                                 "prepared; please tell an administrator.", reason="tunnel",
                                 log_message=f"login node for {self._log_name}: {err}") from err
        self._login_node = settings

    def _forward(self) -> Any:
        """login-node: this server's forward supervisor, made (not started) on first use."""
        from gateway.tunnel.loginnode import ForwardSupervisor

        if getattr(self, "_forward_supervisor", None) is None:
            settings = getattr(self, "_login_node", None) or self._connection()[1]
            argv = settings.argv(self.tunnel_port, self.job_host, self.job_port)
            name = self._log_name
            self._forward_supervisor = ForwardSupervisor(
                argv, self.tunnel_port, log=lambda line: self.log.info("login node %s: %s", name, line))
        return self._forward_supervisor

    async def _open_route(self, host: str, port: int, timeout: float = 60) -> tuple[str, int]:
        """Where the proxy reaches the server at host:port: itself, or in login-node mode the
        hub's forward 127.0.0.1:P, started here and waited for (SpawnException if it fails)."""
        self.job_host, self.job_port = host, port
        if self.connect_mode != "login-node":
            return host, port
        from gateway.tunnel.loginnode import ForwardError

        try:
            await self._forward().start().wait_ready(timeout)
        except ForwardError as err:
            raise SpawnException(
                "Your server started, but the hub cannot reach it through the login node; "
                "please tell an administrator.", reason="tunnel",
                log_message=f"login node forward for {self._log_name}: {err}") from err
        return "127.0.0.1", self.tunnel_port

    async def _prepare_tunnel(self, settings: Any) -> dict[str, Any]:
        """Claim the job's loopback port and install its restricted key. The tag is saved in the
        hub's state first, so a hub that dies in between still knows whose line it is."""
        from gateway.tunnel import hubside

        self.connect_mode = "reverse"
        if self.tunnel_tag:  # a start the hub died in left a line behind: remove it first
            await self._release_tunnel()
        self.tunnel_tag = hubside.make_tag(self.user.name, self.name)
        self.tunnel_keys_file = settings.authorized_keys
        self._save_state_now()
        try:
            section = await asyncio.to_thread(hubside.prepare, settings, self.tunnel_tag)
        except hubside.TunnelConfigError as err:
            raise SpawnException(f"No tunnel could be set up: {err}.", reason="tunnel") from err
        except (OSError, ValueError) as err:
            raise SpawnException("Your server's tunnel could not be prepared; please tell an "
                                 "administrator.", reason="tunnel",
                                 log_message=f"tunnel for {self._log_name}: {err}") from err
        self.tunnel_port = section["remote_port"]
        return section

    async def _release_tunnel(self) -> None:
        if self.connect_mode == "login-node":
            from gateway.tunnel import hubside

            supervisor = getattr(self, "_forward_supervisor", None)
            self._forward_supervisor = None
            if supervisor is not None:
                await supervisor.stop()
            hubside.unclaim(self.tunnel_port)
            return
        if self.connect_mode != "reverse" or not (self.tunnel_tag or self.tunnel_port):
            return
        from gateway.tunnel import hubside

        try:
            await asyncio.to_thread(hubside.release, self.tunnel_keys_file, self.tunnel_tag,
                                    self.tunnel_port)
        except (OSError, ValueError) as err:
            self.log.error("Could not remove the tunnel key %s of %s from %s: %s",
                           self.tunnel_tag, self._log_name, self.tunnel_keys_file, err)
            return
        self.tunnel_tag = ""

    async def _tunnel_stayed_down(self) -> bool:
        """True once the job's tunnel has been down longer than tunnel_down_timeout."""
        from gateway.tunnel import hubside

        now = asyncio.get_running_loop().time()
        if await hubside.port_answers(self.tunnel_port):
            if getattr(self, "_tunnel_down_since", None) is not None:
                self.log.info("The tunnel of %s is back", self._log_name)
            self._tunnel_down_since = None
            return False
        if getattr(self, "_tunnel_down_since", None) is None:
            self._tunnel_down_since = now
            self.log.warning("The SSH tunnel of %s (job %s, port %s) is down; its ssh is "
                             "reconnecting", self._log_name, self.job_id, self.tunnel_port)
        down = now - self._tunnel_down_since
        if self.tunnel_down_timeout and down >= self.tunnel_down_timeout:
            self.log.error("The SSH tunnel of %s has been down for %.0f s: the server is "
                           "unreachable and is treated as stopped (job %s will be cancelled)",
                           self._log_name, down, self.job_id)
            return True
        return False

    async def _readopt_forward(self) -> None:
        """login-node, after a hub restart: the forward again on the same P; the route stays."""
        from gateway.tunnel.loginnode import ForwardError

        try:
            await self._forward().start().wait_ready(30)
        except (ForwardError, SpawnException) as err:  # the hub's start-up must go on
            self.log.error("The forward of %s through the login node is not up yet (still "
                           "retrying): %s", self._log_name, err)
        if self.server is not None:
            self.server.ip, self.server.port = "127.0.0.1", self.tunnel_port
