"""`hpcgate depot create|check|list`: provision the policy's depots and keep them as the policy says.

    hpcgate depot list   [--policy SITE.yaml] [--json]
    hpcgate depot create NAME [--policy SITE.yaml]
    hpcgate depot check  [NAME ...] [--fix] [--policy SITE.yaml]

Exit codes: 0 all in order, 1 drift left or a repair failed, 2 the policy or the request is wrong.
"""

from __future__ import annotations

import argparse
import grp
import json
import os
import pwd
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from gateway.depots.groups import GroupError, GroupResolver
from gateway.depots.provision import (
    Drift,
    ProvisionError,
    apply,
    desired_state,
    drift,
    read_state,
    unreachable_parent,
)
from gateway.policy.load import PolicyFileError, load_policy
from gateway.policy.model import SitePolicy

DEFAULT_POLICY = "/etc/hpcgate/site.yaml"


@dataclass
class DepotReport:
    """What check (or create) found for one depot and what it did."""

    name: str
    path: str
    drifts: list[Drift] = field(default_factory=list)
    repaired: list[Drift] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def in_order(self) -> bool:
        return self.error is None and not self.drifts


def _names(resolved: dict[int, str]) -> tuple[Any, Any]:
    def group(gid: int) -> str:
        if gid in resolved:
            return f"{resolved[gid]} (gid {gid})"
        try:
            return f"{grp.getgrgid(gid).gr_name} (gid {gid})"
        except KeyError:
            return f"gid {gid}"

    def user(uid: int) -> str:
        try:
            return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
        except KeyError:
            return f"uid {uid}"
    return group, user


def check_depot(policy: SitePolicy, name: str, resolver: GroupResolver, fix: bool) -> DepotReport:
    """Compare one depot with the policy; with `fix`, repair (or create) it and compare again."""
    depot = policy.depots[name]
    report = DepotReport(name, depot.path)
    try:
        owner = resolver.resolve(depot.group)
        readers = {g: resolver.resolve(g) for g in depot.read_only_groups}
    except GroupError as err:
        report.error = f"cannot resolve its groups: {err}"
        return report
    for group in (owner, *readers.values()):
        if group.mismatch:
            report.notes.append(group.mismatch)
    want = desired_state(depot, owner.gid, {g: r.gid for g, r in readers.items()})
    group_name, user_name = _names({r.gid: r.name for r in (owner, *readers.values())})
    blocked = unreachable_parent(depot.path)
    if blocked:
        report.notes.append(f"{blocked} is not searchable by others (no o+x), so members cannot "
                            "reach the depot inside it")
    try:
        have = read_state(depot.path)
        report.drifts = drift(want, have, group_name, user_name)
        if fix and report.drifts:
            apply(want, have)
            report.repaired, report.drifts = report.drifts, drift(want, read_state(depot.path),
                                                                  group_name, user_name)
    except ProvisionError as err:
        report.error = str(err)
    return report


def _summary(policy: SitePolicy, name: str) -> str:
    d = policy.depots[name]
    readers = f", read by {', '.join(d.read_only_groups)}" if d.read_only_groups else ""
    return f"{d.path}, {'2770' if d.access == 'rw' else '2750'}, group {d.group}{readers}"


def _print_report(r: DepotReport, policy: SitePolicy, fix: bool, out: TextIO) -> None:
    for note in r.notes:
        print(f"{r.name}: warning: {note}.", file=out)
    for d in r.repaired:
        print(f"{r.name}: repaired: {d}.", file=out)
    if r.error:
        print(f"{r.name}: FAILED: {r.error}.", file=out)
        return
    for d in r.drifts:
        print(f"{r.name}: {d}.", file=out)
    if r.drifts:
        n = len(r.drifts)
        hint = "" if fix else " `hpcgate depot check --fix` repairs it."
        print(f"{r.name}: {n} problem{'s' if n != 1 else ''}.{hint}", file=out)
    else:
        now = " now" if r.repaired else ""
        print(f"{r.name}: in order{now} ({_summary(policy, r.name)}).", file=out)


def _needs_root(out: TextIO) -> bool:
    if os.geteuid() != 0:
        print("hpcgate depot: changing owners and ACLs needs root; run it as root.", file=out)
        return True
    return False


def cmd_list(policy: SitePolicy, as_json: bool, out: TextIO) -> int:
    rows = []
    for name, d in policy.depots.items():
        present = os.path.isdir(d.path) and not os.path.islink(d.path)
        rows.append({"name": name, "path": d.path, "group": d.group, "access": d.access,
                     "read_only_groups": list(d.read_only_groups), "description": d.description,
                     "present": present})
    if as_json:
        print(json.dumps(rows, indent=2), file=out)
        return 0
    if not rows:
        print("The policy defines no depots.", file=out)
    for row in rows:
        state = "present" if row["present"] else f"MISSING: hpcgate depot create {row['name']}"
        who = f"{row['group']} {'reads and writes' if row['access'] == 'rw' else 'reads'}"
        if row["read_only_groups"]:
            who += f"; {', '.join(row['read_only_groups'])} read"
        print(f"{row['name']}: {row['path']} ({state})", file=out)
        print(f"    {who}. {row['description']}".rstrip(), file=out)
    return 0


def cmd_check(policy: SitePolicy, names: Sequence[str], fix: bool, out: TextIO) -> int:
    if fix and _needs_root(out):
        return 2
    if not policy.depots:
        print("The policy defines no depots.", file=out)
        return 0
    with GroupResolver(policy) as resolver:
        print(f"Group numbers from the {resolver.source}.", file=out)
        reports = [check_depot(policy, n, resolver, fix) for n in (names or policy.depots)]
    for r in reports:
        _print_report(r, policy, fix, out)
    return 0 if all(r.in_order for r in reports) else 1


def cmd_create(policy: SitePolicy, name: str, out: TextIO) -> int:
    if _needs_root(out):
        return 2
    with GroupResolver(policy) as resolver:
        report = check_depot(policy, name, resolver, fix=True)
    if report.error is None and not report.repaired:
        print(f"{name}: already in place.", file=out)
    elif report.error is None and report.repaired[0].aspect == "missing":
        report.repaired = []
        print(f"{name}: created {policy.depots[name].path}.", file=out)
    _print_report(report, policy, True, out)
    return 0 if report.in_order else 1


def add_parser(sub: Any) -> None:
    """The `depot` subcommand of `hpcgate` (gateway/cli.py)."""
    depot = sub.add_parser("depot", help="provision and check the policy's data depots")
    depot.add_argument("action", choices=["list", "create", "check"],
                       help="list: the policy's depots; create NAME: provision one; "
                            "check [NAME ...]: report drift (--fix repairs)")
    depot.add_argument("names", nargs="*", metavar="NAME", help="depot names (all when omitted)")
    depot.add_argument("--policy", default=DEFAULT_POLICY,
                       help=f"the site policy file ({DEFAULT_POLICY})")
    depot.add_argument("--fix", action="store_true", help="with check: repair what differs")
    depot.add_argument("--json", action="store_true", help="with list: machine-readable output")
    depot.set_defaults(func=main)


def main(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        policy = load_policy(args.policy)
    except PolicyFileError as err:
        print(f"hpcgate depot: the policy cannot be used:\n{err}", file=out)
        return 2
    unknown = [n for n in args.names if n not in policy.depots]
    if unknown:
        print(f"hpcgate depot: the policy has no depot {unknown[0]!r} "
              f"(it has: {', '.join(policy.depots) or 'none'}).", file=out)
        return 2
    if args.action == "list":
        return cmd_list(policy, args.json, out)
    if args.action == "check":
        return cmd_check(policy, args.names, args.fix, out)
    if len(args.names) != 1:
        print("hpcgate depot create: name exactly one depot.", file=out)
        return 2
    return cmd_create(policy, args.names[0], out)
