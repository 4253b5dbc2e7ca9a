"""The hub's part of reverse mode: a loopback port and a key per job, and checking the tunnel.

The spawner calls `prepare()` before submitting: it claims a free loopback port P on the hub host,
makes the job's key pair, and adds the key to the tunnel account's authorized_keys, allowed to
listen on 127.0.0.1:P and to open the hub API and nothing else. It returns the launch file's
`tunnel` section (the private key included: that file is the user's, mode 0600). `release()`
removes the key and frees the port; it is called at stop and on every failure path.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.tunnel.keys import AuthorizedKeys, entry_line, generate_key
from gateway.tunnel.sshargs import DEFAULT_CIPHERS, host_keys_for

_claimed: set[int] = set()  # ports handed to this hub's servers (a hub is one process)
_claim_lock = threading.Lock()


class TunnelConfigError(ValueError):
    """The tunnel settings cannot work; the message is for the administrator."""


@dataclass(frozen=True)
class TunnelSettings:
    ssh_host: str
    ssh_port: int
    ssh_user: str
    known_hosts: str
    authorized_keys: str
    hub_api_url: str
    ports: tuple[int, int]
    ciphers: str = DEFAULT_CIPHERS
    alive_interval: int = 5

    def hub_api(self) -> tuple[str, int]:
        url = urlsplit(self.hub_api_url)
        if not url.hostname or url.scheme not in ("http", "https"):
            raise TunnelConfigError(f"the hub API URL {self.hub_api_url!r} has no host")
        return url.hostname, url.port or (443 if url.scheme == "https" else 80)


def settings_from(conn: Any, hub_api_url: str) -> TunnelSettings:
    """Reverse mode's settings from the policy's `connection` section; `hub_api_url` is the hub's
    own API URL, used when the section names none. TunnelConfigError says what is missing."""
    api_url = conn.hub_api_url or hub_api_url
    if not conn.ssh_host or not conn.known_hosts or not conn.authorized_keys:
        raise TunnelConfigError("reverse mode needs connection.ssh_host, known_hosts and "
                                "authorized_keys (the hub host's SSH endpoint, its host key and "
                                "the tunnel account's authorized_keys)")
    if api_url.startswith("https:"):
        # The launcher reaches the API through its own forward, in plain HTTP inside SSH.
        raise TunnelConfigError("reverse mode needs an http:// hub API URL (the tunnel encrypts it)")
    return TunnelSettings(ssh_host=conn.ssh_host, ssh_port=conn.ssh_port, ssh_user=conn.tunnel_user,
                          known_hosts=conn.known_hosts, authorized_keys=conn.authorized_keys,
                          hub_api_url=api_url, ports=(conn.first_port, conn.last_port),
                          ciphers=conn.ciphers or DEFAULT_CIPHERS)


def claim(port: int) -> None:
    """Mark a port as used (a server re-adopted after a hub restart keeps its port)."""
    if port:
        _claimed.add(port)


def unclaim(port: int) -> None:
    _claimed.discard(port)


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def allocate_port(ports: tuple[int, int], taken: set[int] | frozenset[int] = frozenset()) -> int:
    """A loopback port in the range that no server of this hub has, that is not in `taken`, and
    that nothing listens on. Binds test sockets: call it from a thread, not the event loop."""
    low, high = ports
    if not 1024 <= low <= high <= 65535:
        raise TunnelConfigError(f"tunnel port range {low}-{high} is not within 1024-65535")
    candidates = list(range(low, high + 1))
    secrets.SystemRandom().shuffle(candidates)
    with _claim_lock:  # spawns prepare their tunnels in threads at the same time
        for port in candidates:
            if port not in _claimed and port not in taken and _free(port):
                _claimed.add(port)
                return port
    raise TunnelConfigError(f"no free loopback port left in {low}-{high} for another tunnel")


def make_tag(user: str, server: str) -> str:
    base = re.sub(r"[^A-Za-z0-9_.@-]", "_", f"{user}-{server or 'default'}")[:100]
    return f"{base}-{secrets.token_hex(4)}"


def pinned_host_keys(settings: TunnelSettings) -> list[str]:
    try:
        text = Path(settings.known_hosts).read_text()
    except OSError as err:
        raise TunnelConfigError(f"cannot read the tunnel endpoint's known_hosts "
                                f"{settings.known_hosts}: {err.strerror}") from err
    keys = host_keys_for(text, settings.ssh_host, settings.ssh_port)
    if not keys:
        raise TunnelConfigError(
            f"{settings.known_hosts} has no host key for [{settings.ssh_host}]:{settings.ssh_port}, "
            "the tunnel endpoint; add its key there")
    return keys


def prepare(settings: TunnelSettings, tag: str) -> dict[str, Any]:
    """Pick the job's loopback port, install its key (allowed: listen on 127.0.0.1 at that port,
    open the hub API) and return the launch file's `tunnel` section (the port as remote_port).
    Blocking: run it in a thread."""
    api_host, api_port = settings.hub_api()
    host_keys = pinned_host_keys(settings)
    key = generate_key()
    port = AuthorizedKeys(settings.authorized_keys).add_on_free_port(
        lambda p: entry_line(key.public, tag, p, api_host, api_port),
        lambda taken: allocate_port(settings.ports, taken))
    return {"mode": "reverse", "ssh_host": settings.ssh_host, "ssh_port": settings.ssh_port,
            "ssh_user": settings.ssh_user, "host_keys": host_keys, "private_key": key.private_openssh,
            "remote_port": port, "hub_api_host": api_host, "hub_api_port": api_port,
            "ciphers": settings.ciphers, "alive_interval": settings.alive_interval}


def release(authorized_keys: str, tag: str, port: int) -> None:
    """Remove the job's key and free its port. Safe to call twice."""
    if tag:
        AuthorizedKeys(authorized_keys).remove(tag)
    unclaim(port)


async def port_answers(port: int, timeout: float = 2.0) -> bool:
    """Whether something listens on 127.0.0.1:port (sshd does, while the job's ssh is connected)."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    return True
