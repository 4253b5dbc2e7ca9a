"""A depot directory: what it should be, what it is, the difference in sentences, and the repair.

`desired_state()` and `drift()` are pure (tested without touching a disk); `read_state()` and
`apply()` are the only functions that make system calls.

What a depot looks like, and why:
- owner root, group the depot's group: members get access through the group, nobody through
  ownership of the directory itself (a member leaving the group loses access);
- setgid: files and directories made inside belong to the depot's group, not the maker's primary
  group;
- mode 2770 (rw) or 2750 (ro), others nothing;
- default ACLs equal to the access ACL: files members create stay group-readable (and writable in a
  rw depot) whatever the creator's umask (a default ACL replaces the umask);
- one named-group r-x entry per read-only group, in both ACLs, and the mask that lets them through.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from gateway.depots.acl import Acl, AclEntry, normalized, perms_bits, perms_text, read_acls, setfacl_argv
from gateway.policy.model import Depot

NameOf = Callable[[int], str]


class ProvisionError(Exception):
    """A depot could not be made or repaired; the message says what to do."""


@dataclass(frozen=True)
class DesiredState:
    path: str
    uid: int
    gid: int
    mode: int
    """Permission bits including setgid, e.g. 0o2770."""
    access_acl: Acl
    default_acl: Acl


@dataclass(frozen=True)
class ActualState:
    path: str
    kind: str
    """'directory', 'missing', 'symlink' or 'other'."""
    uid: int = -1
    gid: int = -1
    mode: int = 0
    access_acl: Acl = ()
    default_acl: Acl = ()


@dataclass(frozen=True)
class Drift:
    aspect: str
    """'missing', 'kind', 'owner', 'group', 'mode', 'acl' or 'default-acl'."""
    sentence: str

    def __str__(self) -> str:
        return self.sentence


def desired_state(depot: Depot, gid: int, read_only_gids: Mapping[str, int]) -> DesiredState:
    """What the depot's directory must look like, given the gids its groups resolve to."""
    group_perms = "rwx" if depot.access == "rw" else "r-x"
    named = [AclEntry("group", g, "r-x") for g in sorted(set(read_only_gids.values())) if g != gid]
    entries = [AclEntry("user", None, "rwx"), AclEntry("group", None, group_perms), *named,
               AclEntry("other", None, "---")]
    if named:
        # The mask caps every group-class entry; it must let the owning group's perms through.
        bits = perms_bits(group_perms)
        for entry in named:
            bits |= perms_bits(entry.perms)
        entries.append(AclEntry("mask", None, perms_text(bits)))
    acl = normalized(entries)
    mode = stat.S_ISGID | 0o700 | (perms_bits(group_perms) << 3)
    return DesiredState(path=depot.path, uid=0, gid=gid, mode=mode, access_acl=acl, default_acl=acl)


def describe_mode(mode: int, group: str) -> str:
    """'2770 (setgid; group soundscape-lab reads and writes; others nothing)'."""
    can = {7: "reads and writes", 5: "reads", 0: "has no access"}.get((mode >> 3) & 7, "has odd access")
    setgid = "setgid; " if mode & stat.S_ISGID else "no setgid; "
    others = "others nothing" if not mode & 7 else f"others {perms_text(mode)}"
    return f"{mode & 0o7777:04o} ({setgid}group {group} {can}; {others})"


def _acl_text(acl: Acl, name: NameOf) -> str:
    return ",".join(e.text(name) for e in acl) or "none"


def _acl_sentence(path: str, kind: str, want: Acl, have: Acl, name: NameOf,
                  compared: Callable[[Acl], Acl] = lambda acl: acl) -> str:
    if not have:  # a directory always has an access ACL (its mode bits): this is the default ACL
        return (f"{path} has no {kind}, so files members create would not stay usable by the "
                f"group; it should be {_acl_text(want, name)}")
    missing = [e.text(name) for e in compared(want) if e not in have]
    extra = [e.text(name) for e in compared(have) if e not in want]
    parts = (["lacks " + ", ".join(missing)] if missing else []) + (
        ["has " + ", ".join(extra) + " that the policy does not give"] if extra else [])
    if not parts:
        parts = [f"is {_acl_text(have, name)}"]
    return f"{path}: the {kind} " + " and ".join(parts) + f"; it should be {_acl_text(want, name)}"


def drift(desired: DesiredState, actual: ActualState, name_of_gid: NameOf,
          name_of_uid: NameOf) -> list[Drift]:
    """Every way `actual` differs from `desired`, each as one plain sentence."""
    p = desired.path
    if actual.kind == "missing":
        return [Drift("missing", f"{p} does not exist")]
    if actual.kind != "directory":
        what = "a symbolic link" if actual.kind == "symlink" else "not a directory"
        return [Drift("kind", f"{p} is {what}; a depot must be a real directory (move it away "
                              "and create the depot again)")]
    found = []
    if actual.uid != desired.uid:
        found.append(Drift("owner", f"{p} is owned by {name_of_uid(actual.uid)}; it should be owned "
                                    f"by {name_of_uid(desired.uid)}"))
    if actual.gid != desired.gid:
        found.append(Drift("group", f"{p} belongs to group {name_of_gid(actual.gid)}; it should "
                                    f"belong to {name_of_gid(desired.gid)}"))
    group = name_of_gid(desired.gid)
    if actual.mode & 0o7777 != desired.mode:
        found.append(Drift("mode", f"{p} has mode {actual.mode & 0o7777:04o}; it should be "
                                   f"{describe_mode(desired.mode, group)}"))
    if _beyond_mode(actual.access_acl) != _beyond_mode(desired.access_acl):
        found.append(Drift("acl", _acl_sentence(p, "access ACL", desired.access_acl,
                                                actual.access_acl, name_of_gid, _beyond_mode)))
    if actual.default_acl != desired.default_acl:
        found.append(Drift("default-acl", _acl_sentence(p, "default ACL", desired.default_acl,
                                                        actual.default_acl, name_of_gid)))
    return found


def _beyond_mode(acl: Acl) -> Acl:
    """The access ACL's entries the mode bits do not already show (the mode is its own drift):
    owner and other are mode bits; so is the mask when there is one, else the owning group."""
    has_mask = any(e.tag == "mask" for e in acl)
    shown = {"user", "other"} | ({"mask"} if has_mask else set())
    return tuple(e for e in acl if not (e.qualifier is None and e.tag in shown)
                 and not (not has_mask and e.tag == "group" and e.qualifier is None))


def unreachable_parent(path: str) -> str | None:
    """The first parent of `path` that others cannot pass through (members could not reach the
    depot however its own permissions are), or None."""
    parent = os.path.dirname(path)
    while True:
        try:
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                return parent
        except OSError:
            return None  # missing parents are made 0755 by apply()
        if parent == "/":
            return None
        parent = os.path.dirname(parent)


def read_state(path: str) -> ActualState:
    """The directory as it is now (lstat: a symlink is reported, never followed)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return ActualState(path, "missing")
    except OSError as err:
        raise ProvisionError(f"cannot look at {path}: {err.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        return ActualState(path, "symlink")
    if not stat.S_ISDIR(st.st_mode):
        return ActualState(path, "other")
    try:
        access, default = read_acls(path, st.st_mode)
    except OSError as err:
        raise ProvisionError(str(err)) from None
    return ActualState(path, "directory", st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), access,
                       default)


def check_parents(path: str) -> None:
    """Refuse a depot whose existing parents someone other than root could swap for a symlink:
    root follows them when it creates, chowns and opens the depot up to group access."""
    parent = os.path.dirname(os.path.abspath(path))
    while True:
        try:
            st = os.lstat(parent)
        except FileNotFoundError:
            st = None
        if st is not None:
            if stat.S_ISLNK(st.st_mode):
                raise ProvisionError(f"{parent}, a parent of {path}, is a symlink; give the depot "
                                     "its real path")
            swappable = st.st_uid != 0 or (st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX)
            if swappable:
                raise ProvisionError(f"{parent}, a parent of {path}, can be changed by others than "
                                     "root (owner or mode); depots need root-owned parents")
        if parent == os.path.dirname(parent):
            return
        parent = os.path.dirname(parent)


def apply(desired: DesiredState, actual: ActualState) -> None:
    """Make the directory match `desired`: create it if missing, then owner, ACLs, mode."""
    path = desired.path
    if actual.kind in ("symlink", "other"):
        raise ProvisionError(f"{path} exists and is not a directory; move it away first")
    check_parents(path)
    try:
        if actual.kind == "missing":
            missing, parent = [], os.path.dirname(path)
            while not os.path.isdir(parent):
                missing.append(parent)
                parent = os.path.dirname(parent)
            for folder in reversed(missing):
                # Parents must let members walk through to the depot (whatever root's umask);
                # they hold nothing themselves.
                os.mkdir(folder)
                os.chmod(folder, 0o755)  # noqa: S103 - traversal for members, nothing inside
            os.mkdir(path, 0o700)  # closed until owner, ACLs and mode are in place
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            os.fchown(fd, desired.uid, desired.gid)
            # setfacl before chmod: setfacl rewrites the group bits, chmod then sets the mask.
            res = subprocess.run(setfacl_argv(f"/proc/self/fd/{fd}", desired.access_acl,
                                              desired.default_acl),
                                 capture_output=True, text=True, timeout=60, pass_fds=(fd,))
            if res.returncode != 0:
                raise ProvisionError(f"setfacl on {path} failed: {res.stderr.strip()}")
            os.fchmod(fd, desired.mode)
        finally:
            os.close(fd)
    except FileNotFoundError as err:
        raise ProvisionError(f"{path} could not be made: {err.strerror} ({err.filename})") from None
    except PermissionError:
        raise ProvisionError(f"{path} could not be changed: permission denied (run as root)") from None
    except OSError as err:
        raise ProvisionError(f"{path} could not be changed: {err.strerror}") from None
