"""The site policy's directory section as an ldap3 connection (check-config and `hpcgate depot`).

The hub's own logins go through auth/ (pooled, off the event loop); these are short-lived
command-line connections with the service account.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import urlsplit

from gateway.policy.model import Directory


def uses_ldaps(d: Directory) -> bool:
    return urlsplit(d.uri).scheme == "ldaps"


def service_connection(d: Directory, password: str) -> Any:
    """An unopened ldap3 Connection for the service account, with the policy's TLS and timeout."""
    import ldap3

    parts = urlsplit(d.uri)
    use_ssl = uses_ldaps(d)
    timeout = max(1, round(d.timeout.total_seconds()))  # ldap3 packs socket timeouts as ints
    tls = ldap3.Tls(ca_certs_file=d.ca_cert,
                    validate=ssl.CERT_REQUIRED if d.verify_tls else ssl.CERT_NONE)
    server = ldap3.Server(parts.hostname or "", port=parts.port or (636 if use_ssl else 389),
                          use_ssl=use_ssl, tls=tls, get_info=ldap3.NONE, connect_timeout=timeout)
    return ldap3.Connection(server, user=d.bind_dn, password=password, auto_bind=False,
                            receive_timeout=timeout, raise_exceptions=False, read_only=True)
