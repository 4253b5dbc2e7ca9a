"""Which address the hub believes a login comes from: the proxy's entry, never the client's."""

from __future__ import annotations

import pytest

from auth.addresses import believed_address, networks

LOCAL = networks(["127.0.0.0/8", "::1"])


@pytest.mark.parametrize(("peer", "xff", "real", "hops", "trust_real", "expected"), [
    # Through the hub's own proxy: the entry it appended, whatever the client wrote before it.
    ("127.0.0.1", ["198.51.100.7, 192.0.2.10"], None, 1, False, "192.0.2.10"),
    ("127.0.0.1", ["198.51.100.7", "192.0.2.10"], "203.0.113.9", 1, False, "192.0.2.10"),
    # Two proxies (a site's nginx, then CHP): two entries from the right.
    ("127.0.0.1", ["6.6.6.6, 192.0.2.10, 10.0.0.2"], None, 2, False, "192.0.2.10"),
    # X-Real-Ip only where the site says its proxy overwrites it.
    ("127.0.0.1", ["192.0.2.10"], "192.0.2.99", 1, True, "192.0.2.99"),
    ("127.0.0.1", ["192.0.2.10"], "not-an-ip", 1, True, "192.0.2.10"),
    # A peer that is not a trusted proxy is the client, whatever it claims.
    ("192.0.2.50", ["127.0.0.1"], "127.0.0.1", 1, True, "192.0.2.50"),
    # Nothing usable from the proxy: the proxy's own address, never a guess.
    ("127.0.0.1", [], None, 1, False, "127.0.0.1"),
    ("127.0.0.1", ["garbage"], None, 1, False, "127.0.0.1"),
    ("127.0.0.1", ["192.0.2.10"], None, 3, False, "127.0.0.1"),
    ("::1", ["2001:db8::5"], None, 1, False, "2001:db8::5"),
])
def test_the_believed_address(peer: str, xff: list[str], real: str | None, hops: int,
                              trust_real: bool, expected: str) -> None:
    assert believed_address(peer, xff, real, trusted=LOCAL, hops=hops,
                            trust_real_ip=trust_real) == expected


def test_a_bad_trusted_entry_is_named() -> None:
    with pytest.raises(ValueError, match="'10.0.0.300'"):
        networks(["10.0.0.0/8", "10.0.0.300"])
