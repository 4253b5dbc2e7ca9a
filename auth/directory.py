"""The directory client under the LDAP authenticator: servers, pooled connections, search-then-bind, groups.

Everything here is blocking ldap3 code, written to run in worker threads (the authenticator's executor),
never on the hub's event loop. Every socket has a connect and a receive timeout, a server that fails is
tried last for a while, and connections are reused: opening one costs a TCP and a TLS handshake, and
opening one per login leaves thousands of sockets in TIME_WAIT under load.

Two kinds of pooled connections per server:
- service connections, bound once as the service account, do every search;
- bind connections are only ever used to check a user's password (a simple bind; a failed bind leaves
  the connection anonymous, a successful one is simply re-bound by the next login). They never search,
  so one user's identity is never used for another user's lookup.
"""

from __future__ import annotations

import logging
import math
import re
import secrets
import socket
import ssl
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import ldap3
from ldap3.core import exceptions as lx
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import parse_dn

__all__ = [
    "DEFAULT_USERNAME_PATTERN",
    "DirectoryClient",
    "DirectoryConfigError",
    "DirectoryError",
    "DirectorySettings",
    "DirectoryUnavailable",
    "Identity",
    "LoginRefused",
    "ServerSpec",
    "dn_value",
    "filter_value",
    "valid_username",
]

log = logging.getLogger("hpcgate.ldap")

# POSIX-style account names (what a uid must look like to become a Unix user on the cluster).
DEFAULT_USERNAME_PATTERN = r"[a-z_][a-z0-9_.-]{0,31}"
# Hard limits whatever the configured pattern says: nobody's name or password is this long, and a
# megabyte of "username" should not reach the directory.
MAX_USERNAME_LENGTH = 256
MAX_PASSWORD_LENGTH = 4096

T = TypeVar("T")


# -- errors --------------------------------------------------------------------------------------


class DirectoryError(Exception):
    """Base class of everything this module raises on purpose."""


class LoginRefused(DirectoryError):
    """The directory answered and did not accept the login (unknown user, wrong password, ...).

    `reason` is for the hub's log; users only ever see one sentence for all of these.
    """

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class DirectoryUnavailable(DirectoryError):
    """No server gave a usable answer. The message names each server and what went wrong with it."""


class DirectoryConfigError(DirectoryError, ValueError):
    """The settings cannot work; the message says which setting and how to fix it."""


class _ServerFailed(Exception):
    """One server failed (connection, timeout, TLS, service bind): try the next one."""


# Transport failures: the connection is useless afterwards.
_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    lx.LDAPCommunicationError,
    lx.LDAPResponseTimeoutError,
    lx.LDAPStartTLSError,
    lx.LDAPCertificateError,
    OSError,
)


# -- validation and escaping ------------------------------------------------------------------------


def valid_username(name: str, pattern: re.Pattern[str]) -> bool:
    """True when `name` may be sent to the directory at all (checked before any LDAP call).

    fullmatch, not match with `$`: `$` also matches before a trailing newline ("alice\\n").
    Control characters and very long names are refused whatever the configured pattern allows.
    """
    if not name or len(name) > MAX_USERNAME_LENGTH:
        return False
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        return False
    return pattern.fullmatch(name) is not None


def filter_value(value: str) -> str:
    """A value for an LDAP filter assertion (RFC 4515): `* ( ) \\ NUL` escaped."""
    return escape_filter_chars(value)


def dn_value(value: str) -> str:
    """An attribute value for a DN (RFC 4514), every special character escaped.

    Like ldap3's escape_rdn, plus: NUL as the hex pair `\\00` (escape_rdn leaves a raw NUL after the
    backslash) and `#` escaped everywhere, not only in front (ldap3's own DN parser refuses a bare `#`).
    """
    if not value:
        raise ValueError("an empty value cannot be part of a DN")
    out = []
    for char in value:
        if char == "\x00":
            out.append("\\00")
        elif char in '\\,+"<>;=#':
            out.append("\\" + char)
        else:
            out.append(char)
    if value[0] == " ":
        out[0] = "\\ "
    if value[-1] == " ":
        out[-1] = "\\ "
    return "".join(out)


def normalize_dn(dn: str) -> str:
    """A DN in one canonical spelling, for comparing DNs from configuration and from the directory."""
    try:
        parts = parse_dn(dn, escape=False, strip=True)
    except lx.LDAPInvalidDnError:
        return dn.strip().lower()
    return ",".join(f"{attr.strip().lower()}={value.strip().lower()}" for attr, value, _sep in parts)


def _rdn_value(dn: str) -> str:
    """The value of a DN's first RDN (`cn=hpc-users,ou=groups,...` -> `hpc-users`)."""
    try:
        parts = parse_dn(dn, escape=False, strip=True)
    except lx.LDAPInvalidDnError:
        return dn
    return parts[0][1] if parts else dn


def _fill(template: str, **values: str) -> str:
    """Fill a filter template; every value is escaped here, so no caller can forget."""
    return template.format(**{k: filter_value(v) for k, v in values.items()})


# -- settings ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerSpec:
    """One directory server, from an `ldap://host[:port]` or `ldaps://host[:port]` URL."""

    url: str
    host: str
    port: int
    ldaps: bool

    @classmethod
    def parse(cls, url: str) -> ServerSpec:
        parts = urlsplit(url.strip())
        if parts.scheme not in ("ldap", "ldaps") or not parts.hostname:
            raise DirectoryConfigError(
                f"{url!r} is not a directory server URL: write ldap://HOST[:PORT] (StartTLS) "
                "or ldaps://HOST[:PORT] (TLS from the start).")
        if parts.path not in ("", "/") or parts.query:
            raise DirectoryConfigError(
                f"{url!r}: a server URL has no path or query here; put search bases in "
                "user_search_base and group_search_base.")
        try:
            port = parts.port
        except ValueError as err:
            raise DirectoryConfigError(f"{url!r}: {err}") from None
        ldaps = parts.scheme == "ldaps"
        return cls(url=f"{parts.scheme}://{parts.netloc}", host=parts.hostname,
                   port=port or (636 if ldaps else 389), ldaps=ldaps)


@dataclass(frozen=True)
class DirectorySettings:
    """What the directory client needs; the authenticator builds it from its traits."""

    servers: Sequence[ServerSpec]
    user_search_base: str = ""
    user_search_filter: str = "(&(objectClass=posixAccount)(uid={username}))"
    username_attribute: str = "uid"
    service_dn: str = ""
    service_password: str = field(default="", repr=False)
    bind_dn_templates: Sequence[str] = ()
    starttls: bool = True
    tls_verify: bool = True
    tls_ca_file: str = ""
    connect_timeout: float = 3.0
    receive_timeout: float = 5.0
    server_retry_interval: float = 30.0
    all_down_retry_interval: float = 5.0
    pool_size: int = 8
    tcp_nodelay: bool = True
    group_search_base: str = ""
    group_search_filter: str = "(|(memberUid={username})(member={dn})(uniqueMember={dn}))"
    group_name_attribute: str = "cn"
    primary_group: bool = True
    nested_group_depth: int = 5
    member_of_attribute: str = "memberOf"

    def check(self) -> None:
        """Raise DirectoryConfigError when these settings cannot work."""
        if not self.servers:
            raise DirectoryConfigError("No directory server configured: set LDAPAuthenticator.server_urls, "
                                       "e.g. ['ldap://ldap1.example.org', 'ldap://ldap2.example.org'].")
        if not self.service_dn and not self.bind_dn_templates:
            raise DirectoryConfigError(
                "Set LDAPAuthenticator.service_dn (and service_password) for search-then-bind, or "
                "LDAPAuthenticator.bind_dn_template, e.g. ['uid={username},ou=people,dc=example,dc=org'].")
        if self.service_dn and not self.user_search_base:
            raise DirectoryConfigError("Search-then-bind needs LDAPAuthenticator.user_search_base, "
                                       "e.g. 'ou=people,dc=example,dc=org'.")
        if self.service_dn and not self.service_password:
            raise DirectoryConfigError(
                f"LDAPAuthenticator.service_dn is {self.service_dn!r} but no service_password is set "
                "(set it, or HPCGATE_LDAP_SERVICE_PASSWORD in the hub's environment).")
        for template in self.bind_dn_templates:
            if "{username}" not in template:
                raise DirectoryConfigError(f"bind_dn_template {template!r} has no {{username}} placeholder.")
        if "{username}" not in self.user_search_filter:
            raise DirectoryConfigError(
                f"user_search_filter {self.user_search_filter!r} has no {{username}} placeholder.")
        for name, template in (("user_search_filter", self.user_search_filter),
                               ("group_search_filter", self.group_search_filter)):
            try:
                _fill(template, username="x", dn="cn=x")
            except (KeyError, IndexError, ValueError) as err:
                raise DirectoryConfigError(
                    f"{name} {template!r} is not a valid template ({err!r}); the placeholders are "
                    "{username} and {dn}.") from None
        if self.tls_ca_file and not Path(self.tls_ca_file).is_file():
            raise DirectoryConfigError(f"LDAPAuthenticator.tls_ca_file {self.tls_ca_file!r} does not exist.")
        if self.connect_timeout <= 0 or self.receive_timeout <= 0:
            raise DirectoryConfigError("connect_timeout and receive_timeout must be positive: "
                                       "without them a silent server hangs every login.")

    @property
    def plaintext_servers(self) -> list[str]:
        return [s.url for s in self.servers if not s.ldaps and not self.starttls]


# -- results -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """Who logged in, as the directory describes them."""

    dn: str
    uid: str
    uid_number: int | None = None
    gid_number: int | None = None
    home: str | None = None
    login_shell: str | None = None
    groups: tuple[str, ...] = ()
    group_dns: tuple[str, ...] = ()

    def auth_state(self) -> dict[str, Any]:
        """What the spawner (job identity) and depots (access) read from the hub's auth_state."""
        return {
            "dn": self.dn,
            "uid": self.uid,
            "uidNumber": self.uid_number,
            "gidNumber": self.gid_number,
            "homeDirectory": self.home,
            "loginShell": self.login_shell,
            "groups": list(self.groups),
            "group_dns": list(self.group_dns),
        }

    def in_any(self, wanted: Iterable[str]) -> bool:
        """Membership in any of `wanted`: a plain name matches a group's name, a DN its full DN."""
        names = set(self.groups)
        dns = {normalize_dn(d) for d in self.group_dns}
        for item in wanted:
            if "=" in item:
                if normalize_dn(item) in dns:
                    return True
            elif item in names:
                return True
        return False


@dataclass
class _UserEntry:
    dn: str
    attributes: dict[str, list[str]]

    def first(self, name: str) -> str | None:
        for key, values in self.attributes.items():
            if key.lower() == name.lower() and values:
                return values[0]
        return None

    def all(self, name: str) -> list[str]:
        for key, values in self.attributes.items():
            if key.lower() == name.lower():
                return list(values)
        return []


def _as_int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _values(raw: Any) -> list[str]:
    # Without schema (get_info=NONE) ldap3 returns strings, in a list or alone.
    if raw is None:
        return []
    if isinstance(raw, (list, tuple)):
        return [v.decode() if isinstance(v, bytes) else str(v) for v in raw]
    return [raw.decode() if isinstance(raw, bytes) else str(raw)]


# -- connections ---------------------------------------------------------------------------------------


def _close(conn: ldap3.Connection) -> None:
    try:
        conn.unbind()
    except Exception:  # noqa: S110 - a connection we give up on may already be dead; nothing to do
        pass
    # ldap3 leaves the socket of a failed open() (e.g. connection refused) for the garbage collector
    sock = getattr(conn, "socket", None)
    if sock is not None:
        sock.close()


class _Pool:
    """Idle connections of one kind to one server, most recently used first."""

    def __init__(self, size: int):
        self.size = size
        self._idle: deque[ldap3.Connection] = deque()
        self._lock = threading.Lock()
        self.opened = 0  # connections created for this pool (tests and benchmarks read it)

    def get(self) -> ldap3.Connection | None:
        with self._lock:
            return self._idle.pop() if self._idle else None

    def put(self, conn: ldap3.Connection) -> None:
        with self._lock:
            if len(self._idle) < self.size:
                self._idle.append(conn)
                return
        _close(conn)

    def clear(self) -> None:
        with self._lock:
            idle, self._idle = list(self._idle), deque()
        for conn in idle:
            _close(conn)


class _Server:
    def __init__(self, spec: ServerSpec, pool_size: int):
        self.spec = spec
        self.pools = {"service": _Pool(pool_size), "bind": _Pool(pool_size)}
        self.failed_at: float | None = None

    def clear(self) -> None:
        for pool in self.pools.values():
            pool.clear()


def _clear_all(servers: list[_Server]) -> None:
    for srv in servers:
        srv.clear()


class DirectoryClient:
    """Search-then-bind (or DN-template bind) and group resolution over a list of replicas.

    Thread-safe; every public method blocks (up to the timeouts) and belongs in a worker thread.
    """

    def __init__(self, settings: DirectorySettings, logger: logging.Logger | None = None):
        settings.check()
        self.settings = settings
        self.log = logger or log
        self._servers = [_Server(spec, settings.pool_size) for spec in settings.servers]
        # Pooled connections are unbound when the client goes away, not left to the garbage collector.
        weakref.finalize(self, _clear_all, self._servers)
        self._tls = ldap3.Tls(
            validate=ssl.CERT_REQUIRED if settings.tls_verify else ssl.CERT_NONE,
            ca_certs_file=settings.tls_ca_file or None,  # None: the system's CA store
        )
        self._all_down_at: float | None = None  # when a pass over every server last failed
        self._answered_at = float("-inf")  # when a server last answered (success or refusal)
        self._probing = threading.Lock()  # held by the one request retrying an all-down directory
        self._receive_timeout = _Seconds(settings.receive_timeout)
        self._time_limit = max(1, math.ceil(settings.receive_timeout))  # the server's limit: whole seconds

    # -- public ------------------------------------------------------------------------------------

    def login(self, username: str, password: str) -> Identity:
        """Check `password` for `username` and return their identity with groups.

        Raises LoginRefused (the directory said no) or DirectoryUnavailable (no server answered).
        `username` must already be validated (valid_username); it is escaped again here anyway.
        """
        if not password:
            # An empty password is an "unauthenticated bind" that many servers accept: never send it.
            raise LoginRefused("empty password")
        if len(password) > MAX_PASSWORD_LENGTH:
            raise LoginRefused("password too long")
        if self.settings.service_dn:
            return self._failover(lambda srv: self._search_then_bind(srv, username, password))
        return self._failover(lambda srv: self._template_bind(srv, username, password))

    def lookup(self, username: str) -> Identity | None:
        """The identity of `username` without a password (for refreshing auth_state); None if gone."""
        if not self.settings.service_dn:
            raise DirectoryConfigError("looking users up needs a service account (service_dn)")

        def op(srv: _Server) -> Identity | None:
            entry = self._with_conn(srv, "service", lambda c: self._find_user(srv, c, username))
            if entry is None:
                return None
            return self._with_conn(srv, "service", lambda c: self._identity(srv, c, entry, username))

        return self._failover(op)

    def close(self) -> None:
        for srv in self._servers:
            srv.clear()

    def server_health(self) -> dict[str, bool]:
        """Each server (URL): False while its last attempt failed, True otherwise."""
        return {srv.spec.url: srv.failed_at is None for srv in self._servers}

    def connections_opened(self) -> int:
        return sum(p.opened for srv in self._servers for p in srv.pools.values())

    # -- failover ----------------------------------------------------------------------------------

    def _ordered(self) -> list[_Server]:
        """Healthy servers in configured order, then recently failed ones (oldest failure first)."""
        now = time.monotonic()
        retry = self.settings.server_retry_interval
        healthy = [s for s in self._servers if s.failed_at is None or now - s.failed_at >= retry]
        failed = sorted((s for s in self._servers if s not in healthy), key=lambda s: s.failed_at or 0)
        return healthy + failed

    def _failover(self, op: Callable[[_Server], T]) -> T:
        """Run `op` on the first server that answers. Once every server has failed in one pass,
        requests are answered at once for all_down_retry_interval seconds, then one request at a
        time tries the servers again (and the others are answered at once meanwhile): an outage
        costs one wait for the timeouts, not one per login, and ties up no login threads."""
        down_at = self._all_down_at
        if down_at is not None:
            ago = time.monotonic() - down_at
            if ago < self.settings.all_down_retry_interval:
                raise DirectoryUnavailable(f"every directory server failed {ago:.1f} s ago")
            if not self._probing.acquire(blocking=False):
                raise DirectoryUnavailable("every directory server failed; another request is "
                                           "trying them again")
            try:
                return self._try_in_turn(op)
            finally:
                self._probing.release()
        return self._try_in_turn(op)

    def _try_in_turn(self, op: Callable[[_Server], T]) -> T:
        started = time.monotonic()
        problems = []
        for srv in self._ordered():
            try:
                result = op(srv)
            except _ServerFailed as err:
                srv.failed_at = time.monotonic()
                srv.clear()  # its other idle connections date from before the failure
                problems.append(str(err))
                self.log.warning("Directory server failed, trying the next one: %s", err)
                continue
            except LoginRefused:  # a refusal is an answer: the server works
                self._answered(srv)
                raise
            self._answered(srv)
            return result
        if started >= self._answered_at:
            # (a pass that began before some server last answered is old news, not an outage)
            self._all_down_at = time.monotonic()
        raise DirectoryUnavailable("no directory server answered: " + "; ".join(problems))

    def _answered(self, srv: _Server) -> None:
        if srv.failed_at is not None:
            self.log.info("Directory server %s answers again.", srv.spec.url)
            srv.failed_at = None
        self._all_down_at = None
        self._answered_at = time.monotonic()

    def _with_conn(self, srv: _Server, kind: str, op: Callable[[ldap3.Connection], T]) -> T:
        """Run `op` on a pooled connection (or a new one); a dead pooled connection is replaced once."""
        pool = srv.pools[kind]
        for _attempt in range(2):
            conn = pool.get()
            fresh = conn is None
            if conn is None:
                conn = self._connect(srv, kind)
                pool.opened += 1
            try:
                self._check_secure(srv, conn)
                result = op(conn)
            except _TRANSPORT_ERRORS as err:
                _close(conn)
                # A timeout is the server's fault, not the connection's: retrying would double the wait.
                if fresh or _is_timeout(err):
                    raise _ServerFailed(self._explain(srv, err, "request")) from err
                srv.clear()
                continue
            except LoginRefused:
                pool.put(conn)  # the directory answered: the connection is fine
                raise
            except BaseException:
                _close(conn)
                raise
            pool.put(conn)
            return result
        raise _ServerFailed(f"{srv.spec.url}: pooled connections keep failing")  # pragma: no cover

    def _check_secure(self, srv: _Server, conn: ldap3.Connection) -> None:
        # ldap3 silently re-opens a closed connection on bind(), without StartTLS: never let a
        # password go out on such a connection.
        if conn.closed:
            raise lx.LDAPSocketSendError("connection closed")
        if self.settings.starttls and not srv.spec.ldaps and not conn.tls_started:
            raise lx.LDAPSocketSendError("connection lost its TLS layer")

    # -- opening connections ------------------------------------------------------------------------

    def _connect(self, srv: _Server, kind: str) -> ldap3.Connection:
        s, spec = self.settings, srv.spec
        # One ldap3.Server per connection: ldap3 mutates Server.current_address on open and close,
        # so a Server shared between threads races ("invalid server address" under load).
        server = ldap3.Server(spec.host, port=spec.port, use_ssl=spec.ldaps, tls=self._tls,
                              get_info=ldap3.NONE,  # no schema read: 13.8 ms per connection otherwise
                              connect_timeout=s.connect_timeout)
        conn = ldap3.Connection(server, receive_timeout=self._receive_timeout,
                                auto_referrals=False,  # a referral would go to a server without our timeouts
                                read_only=True, raise_exceptions=False)
        stage = "connect"
        try:
            conn.open(read_server_info=False)
            self._tune_socket(conn.socket)
            if not spec.ldaps and s.starttls:
                stage = "starttls"
                conn.start_tls(read_server_info=False)
                self._tune_socket(conn.socket)
            if kind == "service":
                stage = "service bind"
                conn.user, conn.password, conn.authentication = s.service_dn, s.service_password, ldap3.SIMPLE
                if not conn.bind(read_server_info=False):
                    result = conn.result or {}
                    _close(conn)
                    raise _ServerFailed(
                        f"{spec.url}: the service account {s.service_dn!r} was refused "
                        f"({result.get('description')}: {result.get('message') or '-'}); check "
                        "LDAPAuthenticator.service_dn and service_password")
        except _TRANSPORT_ERRORS as err:
            _close(conn)
            raise _ServerFailed(self._explain(srv, err, stage)) from err
        return conn

    def _tune_socket(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        sock.settimeout(self.settings.receive_timeout)
        if self.settings.tcp_nodelay:
            # Without it the first request after a TLS handshake waits ~40 ms for a delayed ACK
            # (Nagle); ldap3 has no option for it. The option sits on the fd, so it survives wrapping.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Pooled connections sit idle between logins: let the kernel notice a vanished peer.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)

    def _explain(self, srv: _Server, err: BaseException, stage: str) -> str:
        """One line an admin can act on, for a server that failed at `stage`."""
        s, spec = self.settings, srv.spec
        text = str(err)
        low = text.lower()
        if _is_timeout(err):
            limit = s.connect_timeout if stage == "connect" and "opening" in low else s.receive_timeout
            return f"{spec.url}: no answer within {limit:g} s ({stage})"
        if "refused" in low and stage == "connect":
            return f"{spec.url}: connection refused (is the directory server running on port {spec.port}?)"
        if "certificate_verify_failed" in low or "certificate verify failed" in low:
            ca = s.tls_ca_file or "the system's CA store"
            return (f"{spec.url}: the server's certificate is not trusted by {ca} ({_short(text)}); set "
                    "LDAPAuthenticator.tls_ca_file to the CA that signed it")
        if "doesn't match" in low or "hostname mismatch" in low:
            return (f"{spec.url}: the server's certificate is not valid for the name {spec.host!r}; use a "
                    "name listed in the certificate")
        if stage == "connect" and spec.ldaps and any(
                hint in low for hint in ("wrong version", "unknown protocol", "record layer", "eof")):
            return (f"{spec.url}: no TLS handshake on port {spec.port} ({_short(text)}); if it is a plain "
                    f"LDAP port, use ldap://{spec.host}:{spec.port} (StartTLS)")
        if stage == "starttls":
            if "starttls failed" in low:
                return (f"{spec.url}: the server refused StartTLS ({_short(text)}); enable TLS on the "
                        "server, use an ldaps:// URL, or set LDAPAuthenticator.starttls = False to send "
                        "passwords in clear text (not recommended)")
            if isinstance(err, (lx.LDAPSessionTerminatedByServerError, lx.LDAPSocketReceiveError)):
                return (f"{spec.url}: the server closed the connection at StartTLS; if port {spec.port} "
                        f"expects TLS from the start, use ldaps://{spec.host}:{spec.port}")
            return f"{spec.url}: StartTLS failed ({_short(text)})"
        return f"{spec.url}: {stage} failed ({_short(text)})"

    # -- the login steps -------------------------------------------------------------------------------

    def _user_attributes(self) -> list[str]:
        attrs = [self.settings.username_attribute, "uidNumber", "gidNumber", "homeDirectory", "loginShell"]
        if self.settings.member_of_attribute:
            attrs.append(self.settings.member_of_attribute)
        return attrs

    def _search(self, srv: _Server, conn: ldap3.Connection, base: str, flt: str, attributes: list[str],
                scope: str = ldap3.SUBTREE, size_limit: int = 0) -> list[_UserEntry]:
        conn.search(base, flt, search_scope=scope, attributes=attributes, size_limit=size_limit,
                    time_limit=self._time_limit)
        result = conn.result or {}
        description = result.get("description")
        if description not in ("success", "sizeLimitExceeded", "noSuchObject"):
            raise _ServerFailed(f"{srv.spec.url}: search under {base!r} failed ({description}: "
                                f"{result.get('message') or '-'})")
        if description == "noSuchObject" and scope != ldap3.BASE:
            raise _ServerFailed(f"{srv.spec.url}: the search base {base!r} does not exist; check "
                                "user_search_base and group_search_base")
        return [_UserEntry(r["dn"], {k: _values(v) for k, v in (r.get("attributes") or {}).items()})
                for r in conn.response or [] if r.get("type") == "searchResEntry"]

    def _find_user(self, srv: _Server, conn: ldap3.Connection, username: str) -> _UserEntry | None:
        flt = _fill(self.settings.user_search_filter, username=username)
        # size_limit 2: enough to tell "exactly one" from "ambiguous" without reading a whole tree.
        entries = self._search(srv, conn, self.settings.user_search_base, flt, self._user_attributes(),
                               size_limit=2)
        if len(entries) > 1 or (conn.result or {}).get("description") == "sizeLimitExceeded":
            self.log.error("Login refused: user_search_filter %s matches more than one entry; make it "
                           "match exactly one.", flt)
            raise LoginRefused("ambiguous user")
        return entries[0] if entries else None

    def _check_name(self, entry: _UserEntry, username: str) -> None:
        """The entry found must carry the typed name itself, not a name the server matched loosely.

        Directory matching rules ignore case and surrounding spaces (and ldap3 strips filter values):
        with a permissive valid_username_pattern, "alice " would find alice and log in as another hub
        user with her Unix identity.
        """
        names = entry.all(self.settings.username_attribute)
        if names and username.lower() not in (n.lower() for n in names):
            self.log.warning("Login refused: %r matched %s, whose %s is %s.", username, entry.dn,
                             self.settings.username_attribute, ", ".join(names))
            raise LoginRefused("the directory entry carries another name")

    def _bind_user(self, conn: ldap3.Connection, dn: str, password: str) -> bool:
        conn.user, conn.password, conn.authentication = dn, password, ldap3.SIMPLE
        try:
            ok = conn.bind(read_server_info=False)
        except _TRANSPORT_ERRORS:
            raise
        except (lx.LDAPException, ValueError) as err:  # e.g. a password SASLprep refuses
            self.log.info("Bind as %s refused before sending: %s", dn, err)
            return False
        finally:
            conn.password = None  # not kept on a pooled object
        if not ok:
            result = conn.result or {}
            if result.get("description") != "invalidCredentials":
                # locked account, password policy, bad DN syntax...: the admin wants to know
                self.log.info("Bind as %s refused: %s %s", dn, result.get("description"),
                              result.get("message") or "")
        return ok

    def _search_then_bind(self, srv: _Server, username: str, password: str) -> Identity:
        entry = self._with_conn(srv, "service", lambda c: self._find_user(srv, c, username))
        if entry is None:
            # A bind all the same, to a DN that cannot exist: a refusal then takes as long for
            # an unknown name as for a wrong password, and does not tell which names exist.
            base = self.settings.user_search_base
            nobody = f"cn=hpcgate-nobody-{secrets.token_hex(8)}" + (f",{base}" if base else "")
            self._with_conn(srv, "bind", lambda c: self._bind_user(c, nobody, password))
            raise LoginRefused("unknown user")
        self._check_name(entry, username)
        if not self._with_conn(srv, "bind", lambda c: self._bind_user(c, entry.dn, password)):
            raise LoginRefused("wrong password")
        return self._with_conn(srv, "service", lambda c: self._identity(srv, c, entry, username))

    def _template_bind(self, srv: _Server, username: str, password: str) -> Identity:
        def op(conn: ldap3.Connection) -> Identity:
            for template in self.settings.bind_dn_templates:
                dn = template.format(username=dn_value(username))
                if not self._bind_user(conn, dn, password):
                    continue
                # Bound as the user: read their own entry (base scope) and groups with their rights.
                found = self._search(srv, conn, dn, "(objectClass=*)", self._user_attributes(),
                                     scope=ldap3.BASE)
                entry = found[0] if found else _UserEntry(dn, {})
                self._check_name(entry, username)
                return self._identity(srv, conn, entry, username)
            raise LoginRefused("wrong password or unknown user")

        return self._with_conn(srv, "bind", op)

    def _identity(self, srv: _Server, conn: ldap3.Connection, entry: _UserEntry, username: str) -> Identity:
        groups = self._groups(srv, conn, entry, username)
        return Identity(
            dn=entry.dn,
            uid=username,
            uid_number=_as_int(entry.first("uidNumber")),
            gid_number=_as_int(entry.first("gidNumber")),
            home=entry.first("homeDirectory"),
            login_shell=entry.first("loginShell"),
            groups=tuple(sorted({name for name in groups.values()})),
            group_dns=tuple(sorted(groups)),
        )

    def _groups(self, srv: _Server, conn: ldap3.Connection, entry: _UserEntry,
                username: str) -> dict[str, str]:
        """{group DN: group name}: direct groups, primary group, memberOf, then nested parents."""
        s = self.settings
        name_attr = s.group_name_attribute
        found: dict[str, str] = {}  # normalized DN -> name
        spelled: dict[str, str] = {}  # normalized DN -> DN as the directory spells it

        def add(entries: Iterable[_UserEntry]) -> list[str]:
            new = []
            for e in entries:
                key = normalize_dn(e.dn)
                if key not in found:
                    found[key] = e.first(name_attr) or _rdn_value(e.dn)
                    spelled[key] = e.dn
                    new.append(e.dn)
            return new

        frontier: list[str] = []
        if s.group_search_base:
            parts = []
            if s.group_search_filter:
                parts.append(_fill(s.group_search_filter, username=username, dn=entry.dn))
            gid = _as_int(entry.first("gidNumber"))
            if s.primary_group and gid is not None:
                parts.append(f"(&(objectClass=posixGroup)(gidNumber={gid}))")
            if parts:
                flt = parts[0] if len(parts) == 1 else "(|" + "".join(parts) + ")"
                frontier += add(self._search(srv, conn, s.group_search_base, flt, [name_attr]))
        if s.member_of_attribute:
            member_of = entry.all(s.member_of_attribute)
            if s.group_search_base:
                # Named by their RDN, groups elsewhere in the tree (an OU where users may make
                # groups) could pose as a policy group of the same name: only the group base counts.
                base = normalize_dn(s.group_search_base)
                member_of = [dn for dn in member_of if normalize_dn(dn).endswith("," + base)]
            frontier += add(_UserEntry(dn, {}) for dn in member_of)

        # Nested groups: groups whose member is one of the groups found so far. Breadth-first, one
        # search per level (batched), bounded depth; `found` makes cycles harmless.
        if s.group_search_base:
            for _level in range(max(0, s.nested_group_depth)):
                if not frontier:
                    break
                parents: list[str] = []
                for start in range(0, len(frontier), 50):
                    batch = frontier[start:start + 50]
                    flt = "(|" + "".join(f"(member={filter_value(d)})(uniqueMember={filter_value(d)})"
                                         for d in batch) + ")"
                    parents += add(self._search(srv, conn, s.group_search_base, flt, [name_attr]))
                frontier = parents
        return {spelled[k]: v for k, v in found.items()}


class _Seconds(float):
    """A timeout ldap3 can use both ways: socket.settimeout() takes it as it is (1.5 s stays 1.5 s, also
    for the TLS handshake inside open()), and ldap3's struct.pack('LL', ...) for SO_RCVTIMEO, which
    needs an integer, gets whole seconds through __index__ instead of raising struct.error."""

    def __index__(self) -> int:
        return max(1, math.ceil(self))


def _is_timeout(err: BaseException) -> bool:
    return isinstance(err, (TimeoutError, socket.timeout, lx.LDAPResponseTimeoutError)) or (
        "timed out" in str(err).lower())


def _short(text: str, limit: int = 200) -> str:
    # ldap3 nests messages in tuples of reprs: keep the words
    text = " ".join(text.split())
    text = re.sub(r"^[\s(\"',]+|[\s)\"',]+$", "", text)
    return text if len(text) <= limit else text[:limit] + "..."
