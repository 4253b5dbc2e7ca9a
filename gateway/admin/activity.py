"""`hpcgate activity export`: an admin's export of the hub's activity store, on the hub host.

    hpcgate activity export (--user U | --group G) [--since T] [--until T] --format csv|jsonl
                            [--db hpcgate-activity.sqlite] [--policy site.yaml] [--output FILE]

It reads the store's SQLite file read-only (the hub may keep running), so it needs the rights of
the hub's account on that file (mode 0600): root or that account, i.e. an admin. A group's members
are those the host's account database (NSS: the directory through sssd or nslcd) lists, by
membership or primary group. With --policy, records older than its activity.retention are left
out, as the hub does (they are about to be deleted).
"""

from __future__ import annotations

import argparse
import grp
import pwd
import sqlite3
import sys
import time
from typing import Any


def group_members(group: str) -> list[str]:
    """Members of a Unix group as NSS sees it: listed members and users whose primary group it is."""
    try:
        entry = grp.getgrnam(group)
    except KeyError:
        raise SystemExit(f"hpcgate activity export: there is no group {group!r} on this host "
                         "(as its account database sees it).") from None
    members = set(entry.gr_mem)
    members.update(p.pw_name for p in pwd.getpwall() if p.pw_gid == entry.gr_gid)
    return sorted(members)


def add_parser(sub: Any) -> None:
    activity = sub.add_parser("activity", help="the hub's activity history (admins)")
    actions = activity.add_subparsers(dest="action", required=True)
    export = actions.add_parser(
        "export", help="write one user's or one group's activity records as CSV or JSON Lines",
        description="Export activity records from the hub's store (read-only; the hub may run).")
    who = export.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="one hub user")
    who.add_argument("--group", help="every member of a directory group (as NSS lists them)")
    export.add_argument("--since", help="from: a date (2026-12-01), a date and time in UTC "
                                        "(2026-12-01T14:00) or a time ago (7d, 12h); default: all")
    export.add_argument("--until", help="to (inclusive), written as --since; default: now")
    export.add_argument("--format", choices=["csv", "jsonl"], required=True)
    export.add_argument("--db", default="hpcgate-activity.sqlite",
                        help="the store's file (c.ActivityStore.db_path; relative to the hub's "
                             "directory by default: hpcgate-activity.sqlite)")
    export.add_argument("--policy", help="the site policy: leave out records past its retention")
    export.add_argument("--output", "-o", help="write here instead of standard output")
    export.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from gateway.hub.activity_store import open_read_only, query_records
    from gateway.hub.activity_view import csv_row, parse_when

    now = time.time()
    try:
        since = parse_when(args.since, now) if args.since else 0.0
        until = parse_when(args.until, now, end=True) if args.until else now
    except ValueError as err:
        print(f"hpcgate activity export: {err}", file=sys.stderr)
        return 2
    if args.policy:
        from gateway.policy.load import PolicyFileError, load_policy

        try:
            since = max(since, now - load_policy(args.policy).activity.retention.total_seconds())
        except PolicyFileError as err:
            print(f"hpcgate activity export: {err}", file=sys.stderr)
            return 2
    users = [args.user] if args.user else group_members(args.group)
    try:
        db = open_read_only(args.db)
        records = query_records(db, users, since, until)
    except (OSError, sqlite3.Error) as err:  # not a store, or no rights on it
        print(f"hpcgate activity export: cannot read the activity store {args.db}: {err}",
              file=sys.stderr)
        return 1
    out = open(args.output, "w", newline="") if args.output else sys.stdout  # noqa: SIM115
    try:
        if args.format == "csv":
            import csv

            from gateway.hub.activity_view import CSV_COLUMNS

            writer = csv.writer(out, lineterminator="\r\n")
            writer.writerow(CSV_COLUMNS)
            writer.writerows(csv_row(r) for r in records)
        else:
            from gateway.hub.activity_view import to_jsonl

            out.write(to_jsonl(records))
    finally:
        if out is not sys.stdout:
            out.close()
    print(f"{len(records)} records of {', '.join(users) or 'nobody'}", file=sys.stderr)
    return 0
