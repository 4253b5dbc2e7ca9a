"""POSIX ACLs of one directory: read from the kernel's own record, written with setfacl.

Reading goes through the `system.posix_acl_access` / `system.posix_acl_default` extended
attributes (the exact entries, numeric ids, no text parsing); writing uses `setfacl --set`, the
tool admins know, so what `hpcgate depot` does can be repeated by hand.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

ACCESS_XATTR = "system.posix_acl_access"
DEFAULT_XATTR = "system.posix_acl_default"

# <linux/posix_acl_xattr.h>: a little-endian u32 version (2), then (u16 tag, u16 perm, u32 id).
_VERSION = 2
_HEADER = struct.Struct("<I")
_ENTRY = struct.Struct("<HHI")
_TAGS = {0x01: "user", 0x02: "user", 0x04: "group", 0x08: "group", 0x10: "mask", 0x20: "other"}
_NAMED = {0x02, 0x08}
_ORDER = {"user": 0, "group": 1, "mask": 2, "other": 3}


class AclError(OSError):
    """An ACL could not be read or written; the message says why in plain words."""


@dataclass(frozen=True, order=True)
class AclEntry:
    """One entry: tag user/group/mask/other, a uid or gid for named entries, perms like 'r-x'."""

    tag: str
    qualifier: int | None
    perms: str

    def sort_key(self) -> tuple[int, int, int]:
        # The kernel's order: owner, named users, owning group, named groups, mask, other.
        return (_ORDER[self.tag], 0 if self.qualifier is None else 1, self.qualifier or 0)

    def text(self, name: Callable[[int], str] | None = None) -> str:
        """`group:5102:r-x`, or `group:hub-admins:r-x` when `name` turns ids into names."""
        who = "" if self.qualifier is None else (name(self.qualifier) if name else str(self.qualifier))
        return f"{self.tag}:{who}:{self.perms}"


Acl = tuple[AclEntry, ...]


def normalized(entries: Iterable[AclEntry]) -> Acl:
    return tuple(sorted(set(entries), key=AclEntry.sort_key))


def perms_text(bits: int) -> str:
    return ("r" if bits & 4 else "-") + ("w" if bits & 2 else "-") + ("x" if bits & 1 else "-")


def perms_bits(text: str) -> int:
    return (4 if "r" in text else 0) | (2 if "w" in text else 0) | (1 if "x" in text else 0)


def parse_xattr(data: bytes) -> Acl:
    """The entries of a `system.posix_acl_*` attribute value."""
    if len(data) < _HEADER.size or (len(data) - _HEADER.size) % _ENTRY.size:
        raise AclError(errno.EINVAL, f"an ACL attribute of {len(data)} bytes is malformed")
    (version,) = _HEADER.unpack_from(data)
    if version != _VERSION:
        raise AclError(errno.EINVAL, f"ACL attribute version {version} is not 2")
    entries = []
    for offset in range(_HEADER.size, len(data), _ENTRY.size):
        tag, perm, qualifier = _ENTRY.unpack_from(data, offset)
        if tag not in _TAGS:
            raise AclError(errno.EINVAL, f"unknown ACL tag {tag:#x}")
        entries.append(AclEntry(_TAGS[tag], qualifier if tag in _NAMED else None,
                                perms_text(perm & 7)))
    return normalized(entries)


def from_mode(mode: int) -> Acl:
    """The ACL a directory without an access ACL attribute has: its permission bits."""
    return (AclEntry("user", None, perms_text(mode >> 6)), AclEntry("group", None, perms_text(mode >> 3)),
            AclEntry("other", None, perms_text(mode)))


def read_acls(path: str, mode: int) -> tuple[Acl, Acl]:
    """(access ACL, default ACL) of `path` (never following a final symlink)."""

    def get(name: str) -> bytes | None:
        try:
            return os.getxattr(path, name, follow_symlinks=False)
        except OSError as err:
            if err.errno == errno.ENODATA:
                return None
            if err.errno in (errno.EOPNOTSUPP, errno.ENOTSUP):
                raise AclError(err.errno, f"the filesystem holding {path} does not support POSIX "
                                          "ACLs (mount it with the acl option)") from None
            raise AclError(err.errno, f"cannot read the ACL of {path}: {err.strerror}") from None

    access = get(ACCESS_XATTR)
    default = get(DEFAULT_XATTR)
    return (parse_xattr(access) if access else from_mode(mode),
            parse_xattr(default) if default else ())


def setfacl_argv(path: str, access: Acl, default: Acl) -> list[str]:
    """`setfacl --set` replacing both ACLs of `path` at once (numeric ids: no name lookups)."""
    spec = [e.text() for e in access] + [f"default:{e.text()}" for e in default]
    return ["setfacl", "--set", ",".join(spec), "--", path]
