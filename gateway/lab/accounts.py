"""The lab's people and groups: one definition for the directory and the local Unix accounts.

Jobs run under the users' real identities, so every directory user has a local account with the
same uidNumber, gidNumber and supplementary groups (what a site gets from sssd/nslcd).
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from gateway.lab.procs import LabError, run


@dataclass(frozen=True)
class LabGroup:
    name: str
    gid: int
    description: str


@dataclass(frozen=True)
class LabUser:
    name: str
    uid: int
    full_name: str
    groups: tuple[str, ...]
    """Directory groups; the first is the primary (gidNumber) group."""

    @property
    def home(self) -> str:
        """The Unix account's home, shared by every lab on the machine: nothing of ours writes there."""
        return f"/home/{self.name}"

    def workdir(self, lab_dir: Path | str) -> str:
        """This lab's home for the user (the directory's homeDirectory, the policy's job.workdir):
        each lab keeps its users' files apart, so a demo starts clean and labs run side by side."""
        return workdir_template(lab_dir).format(user=self.name)


def workdir_template(lab_dir: Path | str) -> str:
    """The lab policies' job.workdir: `DIR/home/{user}`."""
    return f"{Path(lab_dir)}/home/{{user}}"


GROUPS = (
    LabGroup("hpc-users", 5100, "Everyone allowed to use the cluster"),
    LabGroup("soundscape-lab", 5101, "Soundscape ecology lab: audio recordings depot"),
    LabGroup("hub-admins", 5102, "Administrators of the notebook portal"),
    # The soundscape lab's leads see its members' activity history (demo.yaml's activity.viewers).
    LabGroup("soundscape-leads", 5103, "Leads of the soundscape lab: see its activity history"),
)

USERS = (
    LabUser("alice", 5001, "Alice Acoustic", ("hpc-users", "soundscape-lab", "soundscape-leads")),
    LabUser("bob", 5002, "Bob Birdsong", ("hpc-users", "soundscape-lab")),
    LabUser("carol", 5003, "Carol Admin", ("hpc-users", "hub-admins")),
)


# Extra users for a busy lab (`hpcgate lab up --users N`): uids far from the named ones.
EXTRA_UID_BASE = 6000


def extra_users(count: int) -> tuple[LabUser, ...]:
    """user01..userNN, in hpc-users only: a workshop's worth of ordinary cluster users."""
    if count < 0:
        raise LabError("--users must be zero or more.")
    if count > 999:
        raise LabError("The lab makes at most 999 extra users.")
    width = max(2, len(str(count)))
    return tuple(LabUser(f"user{i:0{width}d}", EXTRA_UID_BASE + i, f"Workshop User{i:0{width}d}",
                         ("hpc-users",)) for i in range(1, count + 1))


def all_users(extra: int = 0) -> tuple[LabUser, ...]:
    return USERS + extra_users(extra)


# The hub host's account that jobs' reverse tunnels log in as: no shell, no home, no password;
# what each job's key may do is in its authorized_keys line (see gateway/tunnel/keys.py).
TUNNEL_USER = "hpcgate-tunnel"


def ensure_tunnel_account() -> None:
    try:
        pwd.getpwnam(TUNNEL_USER)
    except KeyError:
        run(["useradd", "-r", "-M", "-d", "/nonexistent", "-s", "/usr/sbin/nologin",
             "-c", "hpcgate reverse tunnels", "-p", "*", TUNNEL_USER])
        return
    run(["usermod", "-p", "*", TUNNEL_USER])  # '*': no password, but not locked for sshd


def group_gid(name: str) -> int:
    return next(g.gid for g in GROUPS if g.name == name)


def ensure_accounts(users: tuple[LabUser, ...] = USERS) -> None:
    """Create the groups and users if missing; refuse if a name is taken with another number."""
    for group in GROUPS:
        try:
            existing = grp.getgrnam(group.name)
        except KeyError:
            run(["groupadd", "-g", str(group.gid), group.name])
            continue
        if existing.gr_gid != group.gid:
            raise LabError(
                f"The local group {group.name!r} has gid {existing.gr_gid}, but the lab directory "
                f"says {group.gid}. Remove it (groupdel {group.name}) or use another machine."
            )
    for user in users:
        primary, *others = user.groups
        try:
            existing = pwd.getpwnam(user.name)
        except KeyError:
            # Password '*': no password login, but not "locked" (sshd refuses locked accounts).
            run(["useradd", "-u", str(user.uid), "-g", primary, *(["-G", ",".join(others)] if others else []),
                 "-m", "-d", user.home, "-s", "/bin/bash", "-c", user.full_name, "-p", "*",
                 user.name])
            os.chmod(user.home, 0o700)
            continue
        if existing.pw_uid != user.uid:
            raise LabError(
                f"The local user {user.name!r} has uid {existing.pw_uid}, but the lab directory "
                f"says {user.uid}. Remove it (userdel {user.name}) or use another machine."
            )
        # Keep supplementary groups in step with the directory (an older lab may predate a group).
        run(["usermod", "-g", primary, "-G", ",".join(others), "-p", "*", user.name])
        home = Path(user.home)
        if not home.exists():
            home.mkdir(mode=0o700)
            os.chown(home, user.uid, group_gid(primary))


def ensure_workdirs(lab_dir: Path, users: tuple[LabUser, ...] = USERS) -> None:
    """`DIR/home/<user>` for each user: theirs and their primary group's, mode 0700; `DIR/home`
    traversable (jobs chdir into their own). A directory left with other owners is corrected."""
    homes = lab_dir / "home"
    homes.mkdir(mode=0o755, exist_ok=True)
    homes.chmod(0o755)
    for user in users:
        path = Path(user.workdir(lab_dir))
        path.mkdir(mode=0o700, exist_ok=True)
        os.chown(path, user.uid, group_gid(user.groups[0]))
        path.chmod(0o700)
