"""Who may see whose activity records, decided on the hub for every request (never by the client).

- Every user sees their own records.
- The members of a viewer group (the site policy's `activity.viewers: {GROUP: [VIEWER GROUPS]}`)
  see the records of GROUP's members and the group's aggregates.
- JupyterHub admins (with a token or session that carries `admin:users`) and holders of the scope
  `custom:hpcgate:read:activity` (the lab's `hub-operator` role has it) see everyone's.
- Nobody else sees anything of another user: the page, the API and the export all ask here.

Group membership comes from the same place as the spawner's limits: the directory groups in the
user's auth_state, else their hub groups, else their Unix groups.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

log = logging.getLogger("hpcgate.activity")

READ_ALL_SCOPE = "custom:hpcgate:read:activity"
READ_ALL_DESCRIPTION = "Read every user's activity history (hpcgate's Activity page and API)."


@dataclass(frozen=True)
class ActivityScope:
    """What one request may see: its own user's records, those of `users`, the aggregates of
    `groups`; or, with `everyone`, all of them."""

    own: str | None
    users: frozenset[str]
    groups: tuple[str, ...]
    everyone: bool = False

    def allows_user(self, name: str) -> bool:
        return self.everyone or name == self.own or name in self.users

    def allows_group(self, group: str) -> bool:
        return group in self.groups


def led_groups(viewer_groups: Iterable[str], viewers: Mapping[str, Iterable[str]]) -> list[str]:
    """The groups whose activity someone in `viewer_groups` may see, per the policy's viewers."""
    mine = set(viewer_groups)
    return sorted(group for group, allowed in viewers.items() if mine & set(allowed))


def scope_for(own: str | None, own_groups: Iterable[str], viewers: Mapping[str, Iterable[str]],
              members: Mapping[str, Iterable[str]], everyone: bool = False,
              all_groups: Iterable[str] = ()) -> ActivityScope:
    """The scope of a request by `own` (None: a service) in `own_groups`; `members` maps each
    group to its members (only the led groups are looked at)."""
    if everyone:
        return ActivityScope(own, frozenset(), tuple(sorted(set(all_groups) | set(viewers))), True)
    groups = led_groups(own_groups, viewers) if own is not None else []
    users = frozenset(u for g in groups for u in members.get(g, ()))
    return ActivityScope(own, users, tuple(groups))


def unix_groups(user: str) -> list[str]:
    import grp
    import os
    import pwd

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return []
    names = []
    for gid in os.getgrouplist(user, entry.pw_gid):
        try:
            names.append(grp.getgrgid(gid).gr_name)
        except KeyError:
            continue
    return names


async def groups_of(user: Any) -> list[str]:
    """A hub user's directory groups, as the spawner finds them (auth_state, hub groups, Unix)."""
    state = await user.get_auth_state() or {}
    if state.get("groups"):
        return [str(g) for g in state["groups"]]
    hub = [g.name for g in getattr(user, "groups", [])]
    if hub:
        return hub
    return await asyncio.to_thread(unix_groups, state.get("uid") or user.name)  # NSS may be slow


class MemberCache:
    """Group members among the hub's users, found at most every `ttl` s (a lead's page view
    must not decrypt every user's auth_state each time)."""

    def __init__(self, ttl: float = 60.0):
        self.ttl = ttl
        self._at = float("-inf")
        self._members: dict[str, set[str]] = {}
        self._lock = asyncio.Lock()

    async def members(self, users: Iterable[Any]) -> dict[str, set[str]]:
        async with self._lock:
            if time.monotonic() - self._at > self.ttl:
                found: dict[str, set[str]] = {}
                for user in users:
                    try:
                        for group in await groups_of(user):
                            found.setdefault(group, set()).add(user.name)
                    except Exception:  # one broken auth_state must not hide the others
                        log.exception("activity: the groups of %s", user.name)
                self._members, self._at = found, time.monotonic()
            return self._members


_member_cache = MemberCache()
_policy_files: dict[str, Any] = {}


def hub_policy(config: Any) -> Any:
    """The site policy the hub was configured with (`configure()`), or None when there is none
    or it cannot be read (then only the defaults hold: own records, 180 days)."""
    from gateway.policy.config import PolicyFile

    try:
        path = config.BatchSpawner.policy_file if config is not None else ""
    except AttributeError:
        path = ""
    if not isinstance(path, str) or not path:
        return None
    reader = _policy_files.get(path)
    if reader is None:
        reader = _policy_files[path] = PolicyFile(path, log)
    try:
        return reader.policy()
    except Exception:
        log.exception("activity: the site policy %s cannot be read", path)
        return None


def retention_of(policy: Any) -> timedelta:
    from gateway.policy.model import Activity

    return policy.activity.retention if policy is not None else Activity().retention


async def request_scope(handler: Any, policy: Any) -> ActivityScope:
    """The scope of a JupyterHub handler's request (its current user or service, its token's
    scopes), with the site policy's viewers."""
    from jupyterhub.scopes import Scope

    viewers: Mapping[str, Iterable[str]] = policy.activity.viewers if policy is not None else {}
    all_groups = list(policy.groups) if policy is not None else []
    who = handler.current_user
    parsed = getattr(handler, "parsed_scopes", {}) or {}
    everyone = parsed.get(READ_ALL_SCOPE) is Scope.ALL or (
        bool(getattr(who, "admin", False)) and parsed.get("admin:users") is Scope.ALL)
    if who is None or getattr(who, "kind", "user") != "user":
        return scope_for(None, (), viewers, {}, everyone, all_groups)
    own_groups = await groups_of(who)
    members: Mapping[str, Iterable[str]] = {}
    if not everyone and led_groups(own_groups, viewers):
        from jupyterhub import orm

        hub_users = [handler.users[u] for u in handler.db.query(orm.User)]
        members = await _member_cache.members(hub_users)
    return scope_for(who.name, own_groups, viewers, members, everyone, all_groups)


async def group_members(handler: Any, group: str) -> list[str]:
    """The hub users in `group` (for a scope that may see it)."""
    from jupyterhub import orm

    hub_users = [handler.users[u] for u in handler.db.query(orm.User)]
    return sorted((await _member_cache.members(hub_users)).get(group, set()))
