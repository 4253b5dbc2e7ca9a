"""Which depots a user sees, and with what access: a pure function of the policy and their groups.

The filesystem has the last word (a group missing on the node means no access there); this is what
the portal shows and links, and it follows the same rules the provisioned permissions encode.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gateway.policy.model import SitePolicy

READ_WRITE = "read-write"
READ_ONLY = "read-only"


@dataclass(frozen=True)
class UserDepot:
    """One depot as one user may use it."""

    name: str
    path: str
    access: str
    """READ_WRITE or READ_ONLY, for this user."""
    description: str
    group: str


def depots_for(policy: SitePolicy, groups: Iterable[str]) -> list[UserDepot]:
    """The depots a member of `groups` may use, in policy order.

    The owning group gets the depot's access (rw or ro); a read-only group reads. A user in both
    gets the better of the two.
    """
    mine = set(groups)
    found = []
    for name, depot in policy.depots.items():
        if depot.group in mine:
            access = READ_WRITE if depot.access == "rw" else READ_ONLY
        elif mine.intersection(depot.read_only_groups):
            access = READ_ONLY
        else:
            continue
        found.append(UserDepot(name=name, path=depot.path, access=access,
                               description=depot.description, group=depot.group))
    return found
