"""One user's share of the policy: the partitions, limits and accounts their groups give them.

A user in several groups gets the union: every partition any of their groups opens, on each the
largest maximum among those groups, every account, and the largest `max_servers`. Defaults come
from the first group (in file order) that changes one, else from the partition.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from gateway.policy.model import Limits, Partition, SitePolicy


@dataclass(frozen=True)
class PartitionOffer:
    """One partition as one user may use it."""

    name: str
    description: str
    limits: Limits
    node: str | None = None


@dataclass(frozen=True)
class UserRules:
    groups: tuple[str, ...]
    """The user's groups that the policy has rules for, in file order."""
    partitions: Mapping[str, PartitionOffer]
    accounts: tuple[str, ...]
    default_account: str | None
    default_partition: str | None
    max_servers: int

    @property
    def may_spawn(self) -> bool:
        return bool(self.partitions) and self.max_servers > 0


def _merge(partition: Partition, per_group: list[Limits]) -> Limits:
    base = partition.limits
    merged = {}
    for f in dataclasses.fields(Limits):
        values = [getattr(lim, f.name) for lim in per_group]
        if f.name.startswith("max_"):
            merged[f.name] = max(values)
        else:
            changed = [v for v in values if v != getattr(base, f.name)]
            merged[f.name] = changed[0] if changed else getattr(base, f.name)
    limits = Limits(**merged)
    # A default taken from one group may sit above a maximum another group lowered: clamp.
    return dataclasses.replace(
        limits,
        default_walltime=min(limits.default_walltime, limits.max_walltime),
        default_cpus=min(limits.default_cpus, limits.max_cpus),
        default_memory=min(limits.default_memory, limits.max_memory),
        default_gpus=min(limits.default_gpus, limits.max_gpus),
    )


def rules_for(policy: SitePolicy, groups: Iterable[str]) -> UserRules:
    """What a member of `groups` (directory group names) may ask for."""
    mine = set(groups)
    rules = [(name, rule) for name, rule in policy.groups.items() if name in mine]
    offers: dict[str, PartitionOffer] = {}
    for part_name, partition in policy.partitions.items():  # policy order, so the form is stable
        per_group = [partition.limits.override(rule.limits.get(part_name))
                     for _, rule in rules if part_name in rule.partitions]
        if per_group:
            offers[part_name] = PartitionOffer(part_name, partition.description,
                                               _merge(partition, per_group), partition.node)
    accounts: list[str] = []
    for _, rule in rules:
        accounts.extend(a for a in rule.accounts if a not in accounts)
    default_account = next((r.default_account for _, r in rules if r.default_account), None)
    if default_account is None and len(accounts) == 1:
        default_account = accounts[0]
    default_partition = policy.default_partition if policy.default_partition in offers else None
    if default_partition is None and offers:
        default_partition = next(iter(offers))
    return UserRules(
        groups=tuple(name for name, _ in rules),
        partitions=MappingProxyType(offers),
        accounts=tuple(accounts),
        default_account=default_account,
        default_partition=default_partition,
        max_servers=max((r.max_servers for _, r in rules), default=0),
    )
