"""A depot group's gid: the directory's gidNumber when the policy names a directory, else NSS.

The directory is the source of truth for group numbers on a cluster (nodes get them through
sssd/nslcd); the host running `hpcgate depot` may not resolve groups through NSS at all. When both
know a group and disagree, members would not get in on this host: that is reported.
"""

from __future__ import annotations

import grp
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.admin.directory import service_connection, uses_ldaps
from gateway.policy.model import Directory, SitePolicy

DIRECTORY = "directory"
LOCAL = "local group database"


class GroupError(LookupError):
    """A group could not be resolved; the message says why and what to check."""


@dataclass(frozen=True)
class ResolvedGroup:
    name: str
    gid: int
    source: str
    """DIRECTORY or LOCAL."""
    local_gid: int | None = None
    """What this host's NSS says, when it knows the group (None when it does not)."""

    @property
    def mismatch(self) -> str | None:
        """A sentence when the directory and this host disagree on the gid."""
        if self.local_gid is None or self.local_gid == self.gid:
            return None
        return (f"group {self.name}: the directory says gidNumber {self.gid} but this host's group "
                f"database says {self.local_gid}; members would not get access on this host")


def _local_gid(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


class GroupResolver:
    """Resolve group names to gids, with one directory connection for all of them.

    Use as a context manager so the connection is closed: `with GroupResolver(policy) as r: ...`.
    """

    def __init__(self, policy: SitePolicy):
        d = policy.directory
        self.directory: Directory | None = d if d is not None and d.group_base_dn else None
        self._conn: Any = None
        self._failed: GroupError | None = None
        self._cache: dict[str, ResolvedGroup] = {}

    @property
    def source(self) -> str:
        if self.directory is None:
            return LOCAL
        return f"{DIRECTORY} ({self.directory.uri}, {self.directory.group_base_dn})"

    def __enter__(self) -> GroupResolver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._conn is not None:
            from ldap3.core.exceptions import LDAPException

            try:
                self._conn.unbind()
            except LDAPException:
                pass
            self._conn = None

    def resolve(self, name: str) -> ResolvedGroup:
        if name not in self._cache:
            self._cache[name] = self._resolve(name)
        return self._cache[name]

    def _resolve(self, name: str) -> ResolvedGroup:
        local = _local_gid(name)
        if self.directory is None:
            if local is None:
                raise GroupError(f"there is no group {name!r} in this host's group database (and "
                                 "the policy names no directory with a group_base_dn to ask)")
            return ResolvedGroup(name, local, LOCAL)
        return ResolvedGroup(name, self._directory_gid(name), DIRECTORY, local)

    def _connect(self) -> Any:
        from ldap3.core.exceptions import LDAPException

        d = self.directory
        assert d is not None
        try:
            password = Path(d.bind_password_file).read_text().rstrip("\n")
        except OSError as err:
            raise GroupError(f"directory.bind_password_file {d.bind_password_file} cannot be read "
                             f"({err.strerror}); run as root") from None
        use_ssl = uses_ldaps(d)
        conn = service_connection(d, password)
        try:
            conn.open()
            if d.start_tls and not use_ssl and not conn.start_tls():
                raise GroupError(f"StartTLS with {d.uri} failed ({conn.result.get('description')})")
            if not conn.bind():
                raise GroupError(f"the directory at {d.uri} refused {d.bind_dn} "
                                 f"({conn.result.get('description') or 'refused'})")
        except LDAPException as err:
            raise GroupError(f"cannot talk to the directory at {d.uri}: {err}") from None
        except OSError as err:
            raise GroupError(f"cannot reach the directory at {d.uri}: {err}") from None
        return conn

    def _directory_gid(self, name: str) -> int:
        from ldap3.core.exceptions import LDAPException
        from ldap3.utils.conv import escape_filter_chars

        d = self.directory
        assert d is not None and d.group_base_dn is not None
        if self._conn is None:
            if self._failed is not None:
                raise self._failed  # one unreachable directory is one message, not one per group
            try:
                self._conn = self._connect()
            except GroupError as err:
                self._failed = err
                raise
        try:
            ok = self._conn.search(
                d.group_base_dn, f"(&(objectClass=posixGroup)(cn={escape_filter_chars(name)}))",
                attributes=["gidNumber"], size_limit=2)
        except LDAPException as err:
            raise GroupError(f"searching the directory for group {name!r} failed: {err}") from None
        entries = self._conn.entries if ok else []
        if not entries:
            raise GroupError(f"the directory has no posixGroup {name!r} under {d.group_base_dn}")
        if len(entries) > 1:
            raise GroupError(f"the directory has several posixGroups named {name!r} under "
                             f"{d.group_base_dn}; cannot tell which gid is meant")
        try:
            return int(str(entries[0].gidNumber.value))
        except (AttributeError, TypeError, ValueError, LDAPException):
            raise GroupError(f"the directory's group {name!r} has no usable gidNumber") from None
