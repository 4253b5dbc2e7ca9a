"""The client's address as the hub should believe it: from the proxy in front, never the client.

JupyterHub serves with tornado's `xheaders`, which takes a client-sent `X-Real-Ip` over
everything, and the first untrusted `X-Forwarded-For` entry otherwise. configurable-http-proxy
passes both headers through and appends the address it saw to `X-Forwarded-For`. So the only
entry a client cannot forge is the one the last trusted proxy appended: counted from the right,
`hops` places in. `X-Real-Ip` counts only where the site's proxy overwrites it (nginx with
`proxy_set_header X-Real-IP $remote_addr`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(specs: Iterable[str]) -> list[Network]:
    """'127.0.0.0/8', '::1', '10.0.0.5' -> networks; ValueError names a bad entry."""
    out = []
    for spec in specs:
        try:
            out.append(ipaddress.ip_network(spec.strip(), strict=False))
        except ValueError as err:
            raise ValueError(f"{spec!r} is not an address or a network ({err})") from None
    return out


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def believed_address(peer: str | None, forwarded_for: Iterable[str], real_ip: str | None, *,
                     trusted: Iterable[Network], hops: int = 1, trust_real_ip: bool = False) -> str | None:
    """The client's address: the TCP peer itself unless the peer is a trusted proxy; then the
    `hops`-th X-Forwarded-For entry from the right (or X-Real-Ip when the site says its proxy
    sets it). Anything unparsable falls back to the peer."""
    peer_ip = _ip(peer or "")
    if peer_ip is None or not any(peer_ip in net for net in trusted):
        return peer
    if trust_real_ip and real_ip and _ip(real_ip) is not None:
        return str(_ip(real_ip))
    entries = [e.strip() for header in forwarded_for for e in header.split(",") if e.strip()]
    if hops >= 1 and len(entries) >= hops:
        found = _ip(entries[-hops])
        if found is not None:
            return str(found)
    return peer


def request_address(request: Any, *, trusted: Iterable[Network], hops: int = 1,
                    trust_real_ip: bool = False) -> str | None:
    """`believed_address` for a tornado request, from its connection's own peer address (what
    xheaders has not rewritten) and its headers."""
    if request is None:
        return None
    context = getattr(getattr(request, "connection", None), "context", None)
    address = getattr(context, "address", None)
    peer = address[0] if isinstance(address, tuple) and address else getattr(request, "remote_ip", None)
    headers = getattr(request, "headers", None)
    forwarded = headers.get_list("X-Forwarded-For") if headers is not None else []
    real_ip = headers.get("X-Real-Ip") if headers is not None else None
    return believed_address(peer, forwarded, real_ip, trusted=trusted, hops=hops,
                            trust_real_ip=trust_real_ip)
