"""hpcgate's LDAP authenticator for JupyterHub 6.1.

Entry point `jupyterhub.authenticators`: `hpcgate-ldap`. A site's jupyterhub_config.py:

    c.JupyterHub.authenticator_class = "hpcgate-ldap"
    c.LDAPAuthenticator.server_urls = ["ldap://ldap1.example.org", "ldap://ldap2.example.org"]
    c.LDAPAuthenticator.tls_ca_file = "/etc/ssl/certs/university-ca.pem"
    c.LDAPAuthenticator.service_dn = "cn=svc-jupyterhub,ou=services,dc=example,dc=org"
    # service_password: from HPCGATE_LDAP_SERVICE_PASSWORD in the hub's environment
    c.LDAPAuthenticator.user_search_base = "ou=people,dc=example,dc=org"
    c.LDAPAuthenticator.group_search_base = "ou=groups,dc=example,dc=org"
    c.LDAPAuthenticator.allowed_groups = {"hpc-users"}
    c.LDAPAuthenticator.admin_groups = {"hub-admins"}

Directory I/O runs in a small thread pool with connect and receive timeouts and an overall deadline, so
the hub's event loop never waits for the directory. What a user can see:
- "Wrong username or password." (403) for an unknown user, a wrong password, or a name that is not
  valid: the three are indistinguishable from outside;
- "Your account is not allowed to use this hub..." (403) for a right password outside the allowed
  groups. Shown only after the password was checked, so it tells nothing to someone guessing; a real
  user told "wrong password" would only go and reset a password that is fine;
- "The directory is unavailable, try again shortly." (503) when no server answers in time;
- "Too many failed logins; try again in N seconds." (429).
They are raised as tornado HTTPErrors: JupyterHub's LoginHandler renders the login form again with the
sentence in it (handlers/login.py intercepts error.html for form posts), with that status, never a 500.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from jupyterhub.auth import Authenticator
from tornado import web
from traitlets import Bool, Callable, Float, Integer, List, Set, Unicode, default, validate

from auth.addresses import networks, request_address
from auth.directory import (
    DEFAULT_USERNAME_PATTERN,
    DirectoryClient,
    DirectoryConfigError,
    DirectorySettings,
    DirectoryUnavailable,
    Identity,
    LoginRefused,
    ServerSpec,
    valid_username,
)
from auth.hublog import follow_hub_log
from auth.throttle import LoginThrottle

WRONG_CREDENTIALS = "Wrong username or password."
UNAVAILABLE = "The directory is unavailable, try again shortly."
NOT_ALLOWED = ("Your account is not allowed to use this hub. If you need it, ask the cluster's "
               "administrators to add you to one of its groups.")
THROTTLED = "Too many failed logins; try again in {seconds} seconds."

_OUTCOMES = {403: "refused", 429: "throttled", 503: "unavailable"}  # login_observer's, by status

CRYPT_KEY_ENV = "JUPYTERHUB_CRYPT_KEY"
SERVICE_PASSWORD_ENV = "HPCGATE_LDAP_SERVICE_PASSWORD"  # noqa: S105 - a variable name


class AuthStateKeyMissing(DirectoryConfigError):
    """enable_auth_state is on but the hub has no key to encrypt auth_state with."""


def _for_log(name: str) -> str:
    # A failed login's "name" can be anything an attacker typed: bounded and repr'd in logs.
    return repr(name[:32] + ("..." if len(name) > 32 else ""))


class LDAPAuthenticator(Authenticator):
    """Log in with a directory account: search-then-bind (or DN templates), TLS verified, groups, replicas."""

    # -- servers and TLS -----------------------------------------------------------------------------

    server_urls = List(
        Unicode(),
        help="""Directory servers, tried in this order: `ldap://host[:port]` (upgraded with StartTLS
        unless `starttls` is False) or `ldaps://host[:port]` (TLS from the start). A server that fails is
        tried last for `server_retry_interval` seconds.""",
    ).tag(config=True)

    starttls = Bool(
        True,
        help="""Upgrade `ldap://` connections with StartTLS before anything else is sent. Turning it off
        sends passwords in clear text; a server that refuses StartTLS makes logins fail with a message in
        the hub's log that says so.""",
    ).tag(config=True)

    tls_verify = Bool(
        True,
        help="""Verify the server's certificate (chain against `tls_ca_file`, and host name). Turning it
        off accepts any certificate, including an attacker's: only for a test directory.""",
    ).tag(config=True)

    tls_ca_file = Unicode(
        "",
        help="""PEM file of the CA(s) that sign the directory's certificates. Empty: the system's CA
        store.""",
    ).tag(config=True)

    connect_timeout = Float(
        3.0, help="Seconds to wait for a TCP connection to a directory server."
    ).tag(config=True)

    receive_timeout = Float(
        5.0,
        help="""Seconds to wait for any answer from a directory server (TLS handshake, StartTLS, search,
        bind) before trying the next one.""",
    ).tag(config=True)

    login_timeout = Float(
        15.0,
        help="""Overall limit for one login's directory work, queueing included. Past it the user sees
        "The directory is unavailable, try again shortly." instead of a page that keeps loading.""",
    ).tag(config=True)

    server_retry_interval = Float(
        30.0, help="Seconds a server that failed is tried after the others."
    ).tag(config=True)

    all_down_retry_interval = Float(
        5.0,
        help="""When every server failed, seconds during which logins are told at once that the
        directory is unavailable; then one login at a time tries the servers again. An outage
        costs one wait for the timeouts instead of one per login.""",
    ).tag(config=True)

    pool_size = Integer(
        8,
        help="""Idle connections kept per server and kind (service searches, user binds). Reusing them
        saves a TCP and TLS handshake per login, and the sockets left in TIME_WAIT by a login storm.""",
    ).tag(config=True)

    max_concurrent_logins = Integer(
        8, help="Threads doing directory work; logins beyond this wait in a queue (within login_timeout)."
    ).tag(config=True)

    tcp_nodelay = Bool(
        True,
        help="""Set TCP_NODELAY on directory sockets. Without it the first request after a TLS handshake
        waits about 40 ms for a delayed ACK. Only for measurements.""",
    ).tag(config=True)

    # -- finding and binding users -----------------------------------------------------------------

    service_dn = Unicode(
        "",
        help="""DN of the service account that searches the directory (search-then-bind). Empty: bind
        directly with `bind_dn_template`.""",
    ).tag(config=True)

    service_password = Unicode(
        help=f"Password of `service_dn`. Default: ${SERVICE_PASSWORD_ENV} from the hub's environment.",
    ).tag(config=True)

    @default("service_password")
    def _service_password_default(self) -> str:
        return os.environ.get(SERVICE_PASSWORD_ENV, "")

    bind_dn_template = List(
        Unicode(),
        help="""DN templates to bind as when there is no service account, e.g.
        `['uid={username},ou=people,dc=example,dc=org']`; `{username}` is DN-escaped. Tried in order.""",
    ).tag(config=True)

    user_search_base = Unicode("", help="Where users are searched, e.g. `ou=people,dc=example,dc=org`.").tag(
        config=True)

    user_search_filter = Unicode(
        "(&(objectClass=posixAccount)(uid={username}))",
        help="""Filter that finds exactly one user; `{username}` is filter-escaped. A filter matching
        several entries refuses the login (and logs why).""",
    ).tag(config=True)

    username_attribute = Unicode("uid", help="Attribute holding the login name.").tag(config=True)

    valid_username_pattern = Unicode(
        DEFAULT_USERNAME_PATTERN,
        help="""Regular expression a (lower-cased) user name must match in full before anything is sent to
        the directory. The default is a POSIX account name: the name becomes a Unix user on the cluster.
        Control characters and names over 256 characters are refused whatever this says.""",
    ).tag(config=True)

    @validate("valid_username_pattern")
    def _check_pattern(self, proposal: Any) -> str:
        try:
            re.compile(proposal["value"])
        except re.error as err:
            raise DirectoryConfigError(f"valid_username_pattern is not a regular expression: {err}") from None
        return proposal["value"]

    # -- groups ------------------------------------------------------------------------------------

    group_search_base = Unicode(
        "", help="Where groups are searched, e.g. `ou=groups,dc=example,dc=org`. Empty: only `memberOf`."
    ).tag(config=True)

    group_search_filter = Unicode(
        "(|(memberUid={username})(member={dn})(uniqueMember={dn}))",
        help="""Filter for the user's direct groups: posixGroup memberUid, groupOfNames member,
        groupOfUniqueNames uniqueMember. `{username}` and `{dn}` are filter-escaped. Empty: none.""",
    ).tag(config=True)

    group_name_attribute = Unicode("cn", help="Attribute holding a group's name.").tag(config=True)

    primary_group = Bool(
        True, help="Count the posixGroup whose gidNumber is the user's gidNumber as one of their groups."
    ).tag(config=True)

    nested_group_depth = Integer(
        5,
        help="""Follow groups that are members of groups (a groupOfNames whose member is another group's
        DN) this many levels up; 0 turns it off. Cycles are harmless.""",
    ).tag(config=True)

    member_of_attribute = Unicode(
        "memberOf",
        help="""User attribute listing group DNs (Active Directory, OpenLDAP's memberof overlay). Those
        groups count too, and are followed up like the others. Empty: not read.""",
    ).tag(config=True)

    allowed_groups = Set(
        Unicode(),
        help="""Members of any of these groups may log in (a name like `hpc-users`, or a group's full DN
        when names are ambiguous). Members of `admin_groups` may too.""",
    ).tag(config=True, allow_config=True)

    admin_groups = Set(
        Unicode(),
        help="""Members of these groups are hub admins, and others are not (admin rights follow the
        directory at each login). Empty: admin rights come from `admin_users` only.""",
    ).tag(config=True)

    refresh_from_directory = Bool(
        True,
        help="""Re-read a logged-in user's identity and groups from the directory every `auth_refresh_age`
        seconds (needs `service_dn`); a user removed from the directory or the allowed groups must log in
        again. While the directory is unavailable the user keeps working.""",
    ).tag(config=True)

    # -- throttling --------------------------------------------------------------------------------

    failed_logins_per_user = Integer(
        5, help="Failed logins allowed per user name within `failed_login_window`; 0: no limit."
    ).tag(config=True)

    failed_logins_per_address = Integer(
        20, help="Failed logins allowed per client address within `failed_login_window`; 0: no limit."
    ).tag(config=True)

    failed_login_window = Float(
        300.0, help="Seconds over which failed logins are counted."
    ).tag(config=True)

    trusted_proxies = List(
        Unicode(), ["127.0.0.0/8", "::1"],
        help="Addresses or networks of the proxies in front of the hub (configurable-http-proxy, "
             "nginx). Only a request from one of them has its client address taken from "
             "X-Forwarded-For; any other peer is the client itself.",
    ).tag(config=True)

    trusted_proxy_hops = Integer(
        1, help="How many trusted proxies append to X-Forwarded-For before the hub (1: the hub's "
                "own proxy). The client's address is that many entries from the right: entries "
                "further left were written by the client and are never believed.",
    ).tag(config=True)

    trust_x_real_ip = Bool(
        False, help="Believe X-Real-Ip from a trusted proxy. Only where that proxy overwrites it "
                    "(nginx: proxy_set_header X-Real-IP $remote_addr); configurable-http-proxy "
                    "passes a client's own X-Real-Ip through.",
    ).tag(config=True)

    login_observer = Callable(
        None, allow_none=True,
        help="""Called after each login attempt with (outcome, seconds); outcome is one of ok, refused,
        throttled, unavailable, error. `gateway.hub.configure()` points it at hpcgate's metrics
        (hpcgate_login_seconds on /hub/metrics).""",
    ).tag(config=True)

    # -- auth_state ----------------------------------------------------------------------------------

    @default("enable_auth_state")
    def _auth_state_default(self) -> bool:
        # The spawner runs jobs as uidNumber/gidNumber and depots check groups: both read auth_state.
        return True

    # -------------------------------------------------------------------------------------------------

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        follow_hub_log(self.log)
        if self.enable_auth_state and not self._have_crypt_key():
            message = (
                "LDAPAuthenticator keeps each user's POSIX identity (uidNumber, gidNumber, home, groups) in "
                f"auth_state, which JupyterHub stores encrypted, but {CRYPT_KEY_ENV} is not set. Generate a "
                f"key with `openssl rand -hex 32`, set {CRYPT_KEY_ENV} to it in the hub's environment and "
                "keep it (it decrypts the stored state), or set c.LDAPAuthenticator.enable_auth_state = "
                "False if nothing needs it.")
            self.log.critical(message)
            raise AuthStateKeyMissing(message)
        self._settings = self._directory_settings()
        self._settings.check()  # a broken configuration stops the hub at start, with the reason
        self._directory: DirectoryClient | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._username_re = re.compile(self.valid_username_pattern)
        self._trusted_proxies = networks(self.trusted_proxies)
        self._throttle = LoginThrottle(self.failed_logins_per_user, self.failed_logins_per_address,
                                       self.failed_login_window)
        if not self.tls_verify:
            self.log.warning("LDAPAuthenticator.tls_verify is False: any certificate is accepted, "
                             "so passwords can go to an impostor.")
        for url in self._settings.plaintext_servers:
            self.log.warning("LDAPAuthenticator: %s without StartTLS sends passwords in clear text.", url)

    @staticmethod
    def _have_crypt_key() -> bool:
        if os.environ.get(CRYPT_KEY_ENV, "").strip():
            return True
        from jupyterhub.crypto import CryptKeeper

        return CryptKeeper.initialized() and bool(CryptKeeper.instance().keys)

    def _directory_settings(self) -> DirectorySettings:
        return DirectorySettings(
            servers=tuple(ServerSpec.parse(u) for u in self.server_urls),
            user_search_base=self.user_search_base,
            user_search_filter=self.user_search_filter,
            username_attribute=self.username_attribute,
            service_dn=self.service_dn,
            service_password=self.service_password,
            bind_dn_templates=tuple(self.bind_dn_template),
            starttls=self.starttls,
            tls_verify=self.tls_verify,
            tls_ca_file=self.tls_ca_file,
            connect_timeout=self.connect_timeout,
            receive_timeout=self.receive_timeout,
            server_retry_interval=self.server_retry_interval,
            all_down_retry_interval=self.all_down_retry_interval,
            pool_size=self.pool_size,
            tcp_nodelay=self.tcp_nodelay,
            group_search_base=self.group_search_base,
            group_search_filter=self.group_search_filter,
            group_name_attribute=self.group_name_attribute,
            primary_group=self.primary_group,
            nested_group_depth=self.nested_group_depth,
            member_of_attribute=self.member_of_attribute,
        )

    @property
    def directory(self) -> DirectoryClient:
        if self._directory is None:
            self._directory = DirectoryClient(self._settings, self.log)
        return self._directory

    async def _in_thread(self, fn: Any, *args: Any) -> Any:
        """Run blocking directory code in the pool; give up waiting after login_timeout."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=self.max_concurrent_logins,
                                                thread_name_prefix="hpcgate-ldap")
        future = asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        # On timeout a queued call is cancelled; a running one ends at its own socket timeouts.
        return await asyncio.wait_for(future, self.login_timeout)

    def valid_login_name(self, name: str) -> bool:
        """The strict check done before any LDAP call (after normalize_username)."""
        return valid_username(name, self._username_re)

    # -- the Authenticator API ----------------------------------------------------------------------

    async def authenticate(self, handler: web.RequestHandler | None, data: dict[str, Any]) -> dict[str, Any]:
        data = data or {}
        raw = str(data.get("username") or "")
        password = str(data.get("password") or "")
        request = getattr(handler, "request", None)
        address = request_address(request, trusted=self._trusted_proxies,
                                   hops=self.trusted_proxy_hops, trust_real_ip=self.trust_x_real_ip)
        name = self.normalize_username(raw)
        valid = self.valid_login_name(name)

        wait = self._throttle.retry_after(name if valid else None, address)
        if wait:
            self.log.warning("Login for %s from %s throttled for %d s after repeated failures.",
                             _for_log(raw), address or "-", wait)
            raise web.HTTPError(429, THROTTLED.format(seconds=wait))
        if not valid:
            self.log.warning("Failed login from %s: %s is not a valid user name; nothing sent to the "
                             "directory.", address or "-", _for_log(raw))
            self._throttle.failed(None, address)  # junk names must not fill the per-user table
            raise web.HTTPError(403, WRONG_CREDENTIALS)
        try:
            with self._throttle.attempt(name, address):
                identity: Identity = await self._in_thread(self.directory.login, name, password)
        except LoginRefused as err:
            self.log.warning("Failed login for %s from %s: %s.", _for_log(name), address or "-", err.reason)
            self._throttle.failed(name, address)
            raise web.HTTPError(403, WRONG_CREDENTIALS) from None
        except (DirectoryUnavailable, asyncio.TimeoutError) as err:
            if isinstance(err, asyncio.TimeoutError):
                # The bind may still be running in its thread: count it, so that passwords slow
                # enough to outlast login_timeout are not free guesses.
                self._throttle.failed(name, address)
            why = str(err) or f"no result within login_timeout ({self.login_timeout:g} s)"
            self.log.error("Login for %s failed, the directory is unavailable: %s", _for_log(name), why)
            raise web.HTTPError(503, UNAVAILABLE) from None
        except Exception:
            # A bug here or a surprise from ldap3: still a sentence on the login page, never a 500.
            self.log.exception("Login for %s failed unexpectedly", _for_log(name))
            raise web.HTTPError(503, UNAVAILABLE) from None
        self._throttle.succeeded(name)
        self.log.info("Directory login for %s (%s), groups: %s", name, identity.dn,
                      ", ".join(identity.groups))
        return self._auth_model(name, identity)

    async def get_authenticated_user(self, handler: web.RequestHandler | None,
                                     data: dict[str, Any]) -> dict[str, Any] | None:
        """JupyterHub's login (authenticate, then the allowed checks), timed for login_observer."""
        started = time.perf_counter()
        outcome = "error"
        try:
            user = await super().get_authenticated_user(handler, data)
            outcome = "ok" if user else "refused"
            return user
        except web.HTTPError as err:
            outcome = _OUTCOMES.get(err.status_code, "error")
            raise
        finally:
            if self.login_observer is not None:
                self.login_observer(outcome, time.perf_counter() - started)

    def directory_health(self) -> dict[str, bool]:
        """Each directory server (URL): whether it answered the last time the hub asked it. A
        server not asked since the hub started counts as up."""
        if self._directory is None:
            return {spec.url: True for spec in self._settings.servers}
        return self._directory.server_health()

    def _auth_model(self, name: str, identity: Identity) -> dict[str, Any]:
        model: dict[str, Any] = {"name": name, "auth_state": identity.auth_state()}
        if self.admin_groups:
            model["admin"] = name in self.admin_users or identity.in_any(self.admin_groups)
        if self.manage_groups:
            model["groups"] = list(identity.groups)
        return model

    def _groups_allow(self, auth_state: dict[str, Any] | None) -> bool:
        state = auth_state or {}
        identity = Identity(dn=state.get("dn") or "", uid=state.get("uid") or "",
                            groups=tuple(state.get("groups") or ()),
                            group_dns=tuple(state.get("group_dns") or ()))
        return identity.in_any(self.allowed_groups | self.admin_groups)

    def check_allowed(self, username: str, authentication: dict[str, Any] | None = None) -> bool:
        if super().check_allowed(username, authentication):  # allow_all, allowed_users
            return True
        if authentication is None:
            return False
        if self._groups_allow(authentication.get("auth_state")):
            return True
        self.log.warning("User %s logged in with the right password but is in none of the allowed "
                         "groups (%s).", username, ", ".join(sorted(self.allowed_groups)) or "none set")
        raise web.HTTPError(403, NOT_ALLOWED)

    async def refresh_user(self, user: Any,
                           handler: web.RequestHandler | None = None) -> bool | dict[str, Any]:
        if not (self.refresh_from_directory and self.service_dn):
            return True
        try:
            identity = await self._in_thread(self.directory.lookup, user.name)
        except (DirectoryUnavailable, asyncio.TimeoutError) as err:
            self.log.warning("Could not refresh %s from the directory, keeping their session: %s",
                             user.name, err or "timeout")
            return True
        except Exception:
            self.log.exception("Refreshing %s from the directory failed; keeping their session", user.name)
            return True
        if identity is None:
            self.log.warning("User %s is no longer in the directory: they must log in again.", user.name)
            return False
        model = self._auth_model(user.name, identity)
        if not (self.allow_all or user.name in self.allowed_users
                or self._groups_allow(model["auth_state"])):
            self.log.warning("User %s left the allowed groups: they must log in again.", user.name)
            return False
        return model
