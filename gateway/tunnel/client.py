"""The job's side of a reverse tunnel: one OpenSSH client process, supervised.

The supervisor runs ssh, reads what it prints (`-v`), and calls the tunnel up only when ssh has
confirmed every forward (sshd answers a remote-forward request only once it listens; a port that
merely opens is not enough). When ssh exits (the connection dropped, the hub host rebooted, sshd
restarted) it starts a new one after a back-off delay: 0.2 s, doubling to 30 s, back to 0.2 s once
a connection has stayed up for 30 s. The Jupyter server and its kernels are separate processes and
never notice, apart from requests made while the tunnel is down.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from gateway.job.private import write_private
from gateway.tunnel.sshargs import (
    Backoff,
    ReverseTunnel,
    known_hosts_text,
    reverse_argv,
)
from gateway.tunnel.supervisor import Log, SshSupervisor


class TunnelError(RuntimeError):
    """The tunnel could not be opened; the message holds what ssh said."""


def _print(line: str) -> None:
    print(f"hpcgate tunnel: {line}", flush=True)


class TunnelSupervisor:
    """The job's reverse tunnel: an `SshSupervisor` on an event loop in a thread of its own, so
    the synchronous launcher (and the Jupyter server it becomes) keeps it running."""

    def __init__(self, argv: list[str], expect: set[tuple[str, int]], log: Log = _print,
                 first_delay: float = 0.2, max_delay: float = 30.0, stable_after: float = 30.0):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="hpcgate-tunnel",
                                        daemon=True)
        self.supervisor = SshSupervisor(argv, expect, log, Backoff(first_delay, max_delay,
                                                                   stable_after),
                                        error=TunnelError, what="the SSH tunnel to the hub")

    def _call(self, coro: Any, timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _start(self) -> None:
        self.supervisor.start()

    def start(self) -> TunnelSupervisor:
        self._thread.start()
        self._call(self._start())
        atexit.register(self.stop)
        return self

    def wait_ready(self, timeout: float, give_up_after: int = 4) -> None:
        """Return once the forwards are confirmed; TunnelError after `timeout` seconds or after
        `give_up_after` failed attempts without ever being up (bad key, unknown host key...)."""
        self._call(self.supervisor.wait_ready(timeout, give_up_after))

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):  # at exit: the ssh must go, whatever else happens
            self._call(self.supervisor.stop(), 15)
        self._loop.call_soon_threadsafe(self._loop.stop)

    @property
    def proc(self) -> asyncio.subprocess.Process | None:
        return self.supervisor.proc

    @property
    def connects(self) -> int:
        return self.supervisor.connects


def rewrite_hub_urls(env: dict[str, str], api_socket: str) -> dict[str, str]:
    """The server's environment with every URL under the hub API moved to the tunnel's end on the
    node, a Unix socket: `http+unix://<quoted path>/...` (JupyterHub's own HTTP client, which the
    single-user server uses for the API and activity, speaks it)."""
    from urllib.parse import quote, urlsplit, urlunsplit

    api = env.get("JUPYTERHUB_API_URL", "")
    base = urlsplit(api)
    out = dict(env)
    for name in ("JUPYTERHUB_API_URL", "JUPYTERHUB_ACTIVITY_URL"):
        url = urlsplit(env.get(name, ""))
        if url.netloc and url.netloc == base.netloc:
            out[name] = urlunsplit(("http+unix", quote(api_socket, safe=""), url.path, url.query, ""))
    return out


def open_reverse_tunnel(config: dict[str, Any], state_dir: Path, server_port: int,
                        log: Log = _print, timeout: float = 60) -> tuple[TunnelSupervisor, str]:
    """Start the supervised tunnel described by the launch file's `tunnel` section; return it and
    the Unix socket where the hub API now answers on the node (in a fresh 0700 directory, removed
    at exit). Raises TunnelError when it cannot open."""
    key_file, known_hosts = state_dir / "tunnel_key", state_dir / "tunnel_known_hosts"
    write_private(key_file, config["private_key"].encode())  # ssh refuses keys others read
    atexit.register(lambda: key_file.unlink(missing_ok=True))
    write_private(known_hosts, known_hosts_text(config["host_keys"]).encode())
    # A short path of its own (sockets allow 108 bytes; homes can be long), 0700 from mkdtemp.
    api_dir = Path(tempfile.mkdtemp(prefix="hpcgate-hubapi-"))
    atexit.register(shutil.rmtree, api_dir, ignore_errors=True)
    api_socket = str(api_dir / "hub.sock")
    spec = ReverseTunnel(
        ssh_host=config["ssh_host"], ssh_port=int(config["ssh_port"]), ssh_user=config["ssh_user"],
        remote_port=int(config["remote_port"]), server_port=server_port, api_local_socket=api_socket,
        hub_api_host=config["hub_api_host"], hub_api_port=int(config["hub_api_port"]),
        ciphers=config.get("ciphers") or ReverseTunnel.ciphers,
        alive_interval=int(config.get("alive_interval", 5)))
    argv = reverse_argv(spec, str(key_file), str(known_hosts), ssh=config.get("ssh", "ssh"))
    supervisor = TunnelSupervisor(argv, {("remote-ok", spec.remote_port), ("local-ok", api_socket)},
                                  log=log).start()
    supervisor.wait_ready(timeout)
    return supervisor, api_socket
