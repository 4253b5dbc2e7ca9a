"""The ✓/✗ report of `hpcgate check-config`, and the small pure helpers its checks share."""

from __future__ import annotations

import concurrent.futures
import grp
import pwd
import socket
from dataclasses import dataclass, field
from typing import TextIO


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def resolve(host: str, timeout: float = 5.0) -> str | None:
    """The first address `host` resolves to on this machine, or None (also on a slow resolver)."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        infos = pool.submit(socket.getaddrinfo, host, None).result(timeout=timeout)
        return str(infos[0][4][0]) if infos else None
    except (OSError, concurrent.futures.TimeoutError, UnicodeError):
        return None
    finally:
        pool.shutdown(wait=False)


# -- the report ---------------------------------------------------------------------------------

MARKS = {"ok": "✓", "fail": "✗", "warn": "!", "skip": "–"}


@dataclass
class Report:
    sections: list[tuple[str, list[tuple[str, str]]]] = field(default_factory=list)
    out: TextIO | None = None
    """When set, each line is printed as it is found (checks can take a while)."""

    def section(self, title: str) -> None:
        self.sections.append((title, []))
        if self.out:
            print(title, file=self.out, flush=True)

    def add(self, status: str, text: str) -> None:
        if not self.sections:
            self.section("Checks")
        self.sections[-1][1].append((status, text))
        if self.out:
            print(f"  {MARKS[status]} {text}", file=self.out, flush=True)

    def ok(self, text: str) -> None:
        self.add("ok", text)

    def fail(self, text: str) -> None:
        self.add("fail", text)

    def warn(self, text: str) -> None:
        self.add("warn", text)

    def skip(self, text: str) -> None:
        self.add("skip", text)

    def lines(self, status: str | None = None) -> list[str]:
        return [text for _, items in self.sections for s, text in items
                if status is None or s == status]

    @property
    def failures(self) -> list[str]:
        return self.lines("fail")

    def summary(self) -> str:
        n = len(self.failures)
        warned = len(self.lines("warn"))
        extra = f" ({warned} warning{'s' if warned != 1 else ''})" if warned else ""
        if n == 0:
            return f"Result: every check passed{extra}."
        return f"Result: {n} problem{'s' if n != 1 else ''} found{extra}."

    def render(self) -> str:
        out = []
        for title, items in self.sections:
            out.append(title)
            out.extend(f"  {MARKS[s]} {text}" for s, text in items)
        out.append(self.summary())
        return "\n".join(out)


def unix_groups_of(user: str) -> list[grp.struct_group]:
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return []
    return [g for g in grp.getgrall() if user in g.gr_mem or g.gr_gid == entry.pw_gid]
