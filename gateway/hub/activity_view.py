"""Pure functions behind the Activity page and the exports: time ranges, the timeline's buckets,
the chart's geometry, the tables, CSV (safe against formula injection) and JSON Lines.

Nothing here does I/O; the hub runs the heavier ones in a thread.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

HOUR, DAY = 3600.0, 86400.0
MAX_HOURLY_SPAN = 14 * DAY  # beyond two weeks the chart counts per day (at most 336 bars per hour)
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a")
ERROR_COLOUR = "#d62728"
_RELATIVE = re.compile(r"^(\d{1,5})\s*([hdw])$")


def parse_when(text: str, now: float, end: bool = False) -> float:
    """Epoch seconds from what a user or admin types: a date (2026-12-01: its start, or with
    `end` its end), an ISO date and time (UTC unless it names an offset), or a time ago (12h,
    7d, 2w). ValueError with a sentence otherwise."""
    text = text.strip()
    m = _RELATIVE.match(text)
    if m:
        return now - int(m.group(1)) * {"h": HOUR, "d": DAY, "w": 7 * DAY}[m.group(2)]
    try:
        if re.fullmatch(r"\d{4}-\d\d-\d\d", text):
            day = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=timezone.utc).timestamp()
            return day + DAY - 1e-6 if end else day
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not a time: write a date (2026-12-01), a date and time "
                         "(2026-12-01T14:00, UTC) or a time ago (12h, 7d, 2w)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


@dataclass(frozen=True)
class TimeRange:
    since: float
    until: float
    clipped: bool = False
    """The asked start was before the retention cutoff: it was moved there."""

    @property
    def hourly(self) -> bool:
        return self.until - self.since <= MAX_HOURLY_SPAN


def time_range(since: str | None, until: str | None, now: float, retention: timedelta,
               default_span: float = 7 * DAY) -> TimeRange:
    """The range asked for, defaulting to the last `default_span`, never before the retention
    cutoff (records before it are deleted, or about to be). ValueError when it is backwards."""
    end = parse_when(until, now, end=True) if until else now
    start = parse_when(since, now) if since else end - default_span
    if start > end:
        raise ValueError("the start of the range is after its end")
    cutoff = now - retention.total_seconds()
    return TimeRange(max(start, cutoff), end, start < cutoff)


def day_text(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d")


def time_text(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _at(rec: dict[str, Any]) -> float:
    from gateway.job.activity.records import parse_iso

    return parse_iso(rec["time"])


@dataclass
class Bucket:
    start: float
    counts: dict[str, int] = field(default_factory=dict)
    errors: int = 0

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass
class Summary:
    """The timeline (executions per bucket and series, errors) and the tables under it."""

    step: float
    buckets: list[Bucket]
    series: list[str]
    executions: int = 0
    errors: int = 0
    events: int = 0
    sessions: list[dict[str, Any]] = field(default_factory=list)
    kernels: list[dict[str, Any]] = field(default_factory=list)
    members: list[dict[str, Any]] = field(default_factory=list)


def _row(table: dict[Any, dict[str, Any]], key: Any, at: float, rec: dict[str, Any],
         **fields: Any) -> None:
    row = table.setdefault(key, {**fields, "executions": 0, "errors": 0, "first": at, "last": at,
                                 "busy_ms": 0.0})
    row["executions"] += 1
    row["errors"] += rec.get("outcome") in ("error", "unfinished", "aborted")
    row["first"], row["last"] = min(row["first"], at), max(row["last"], at)
    row["busy_ms"] += rec.get("duration_ms") or 0.0


def summarize(records: Iterable[dict[str, Any]], rng: TimeRange, by: str = "kernel") -> Summary:
    """Executions per hour (per day for ranges over two weeks) by kernel name (`by="kernel"`)
    or by user (`by="user"`, a group's aggregate); errors are executions that ended in an error,
    were aborted or never finished."""
    step = HOUR if rng.hourly else DAY
    first = rng.since - rng.since % step
    n = max(1, int((rng.until - first) // step) + 1)
    buckets = [Bucket(first + i * step) for i in range(n)]
    sessions: dict[Any, dict[str, Any]] = {}
    kernels: dict[Any, dict[str, Any]] = {}
    members: dict[Any, dict[str, Any]] = {}
    summary = Summary(step, buckets, [])
    series: set[str] = set()
    for rec in records:
        at = _at(rec)
        if rec.get("kind") != "execution":
            summary.events += 1
            continue
        i = int((at - first) // step)
        if not 0 <= i < n:
            continue
        name = str(rec.get("kernel_name") if by == "kernel" else rec.get("user"))
        series.add(name)
        bucket = buckets[i]
        bucket.counts[name] = bucket.counts.get(name, 0) + 1
        failed = rec.get("outcome") in ("error", "unfinished", "aborted")
        bucket.errors += failed
        summary.executions += 1
        summary.errors += failed
        _row(sessions, (rec.get("user"), rec.get("server"), rec.get("session_path"),
                        rec.get("kernel_id")), at, rec, user=rec.get("user"),
             server=rec.get("server"), path=rec.get("session_path") or "(no notebook or console)",
             kernel=rec.get("kernel_name"), node=rec.get("node"), job_id=rec.get("job_id"))
        _row(kernels, (rec.get("kernel_name"), rec.get("language")), at, rec,
             kernel=rec.get("kernel_name"), language=rec.get("language"))
        _row(members, rec.get("user"), at, rec, user=rec.get("user"))
    summary.series = sorted(series)
    summary.sessions = sorted(sessions.values(), key=lambda r: r["last"], reverse=True)
    summary.kernels = sorted(kernels.values(), key=lambda r: -r["executions"])
    summary.members = sorted(members.values(), key=lambda r: r["user"] or "")
    return summary


@dataclass(frozen=True)
class Rect:
    x: float
    y: float
    w: float
    h: float
    colour: str
    title: str


@dataclass(frozen=True)
class Chart:
    """The timeline's SVG geometry; the template draws it (and escapes every text)."""

    width: int
    height: int
    left: int
    top: int
    plot_h: int
    bars: list[Rect]
    error_marks: list[Rect]
    ticks: list[tuple[float, str]]
    y_max: int
    legend: list[tuple[str, str]]
    empty: bool


def colours(series: list[str]) -> dict[str, str]:
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(series)}


def chart(summary: Summary, width: int = 960, height: int = 240) -> Chart:
    """Stacked bars per bucket, one colour per series, a red mark above each bucket with errors."""
    left, top, bottom, right = 44, 14, 30, 10
    plot_w, plot_h = width - left - right, height - top - bottom
    n = len(summary.buckets)
    slot = plot_w / n
    bar_w = max(slot * 0.8, 0.5)
    y_max = max([b.total for b in summary.buckets] + [1])
    scale = plot_h / y_max
    palette = colours(summary.series)
    unit = "hour" if summary.step == HOUR else "day"
    bars, marks = [], []
    for i, b in enumerate(summary.buckets):
        x = left + i * slot + (slot - bar_w) / 2
        y = top + plot_h
        label = time_text(b.start) if unit == "hour" else day_text(b.start)
        for name in summary.series:
            count = b.counts.get(name, 0)
            if not count:
                continue
            h = count * scale
            y -= h
            bars.append(Rect(round(x, 2), round(y, 2), round(bar_w, 2), round(h, 2), palette[name],
                             f"{label}: {name}, {count} execution{'s' if count != 1 else ''}"))
        if b.errors:
            marks.append(Rect(round(x, 2), round(max(y - 6, 0), 2), round(max(bar_w, 4), 2), 4,
                              ERROR_COLOUR, f"{label}: {b.errors} error{'s' if b.errors != 1 else ''}"
                                            " (error, aborted or unfinished)"))
    every = max(1, n // 8)
    ticks = [(round(left + i * slot + slot / 2, 2),
              day_text(b.start) if unit == "day" or b.start % DAY == 0 or i == 0
              else time_text(b.start)[11:16])
             for i, b in enumerate(summary.buckets) if i % every == 0]
    return Chart(width, height, left, top, plot_h, bars, marks, ticks, y_max,
                 [(name, palette[name]) for name in summary.series], summary.executions == 0)


# -- exports ----------------------------------------------------------------------------------

CSV_COLUMNS = ("id", "kind", "time", "user", "server", "job_id", "node", "kernel_id",
               "kernel_name", "language", "session_path", "cell_id", "requested", "started",
               "ended", "duration_ms", "outcome", "ename", "interrupted", "execution_count",
               "msg_id", "client", "code_kept", "code_sha256", "code_lines", "code_text",
               "code_bytes", "output_bytes", "reason", "path", "terminal", "bytes", "range_start",
               "file_bytes", "schema_version")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> str | int | float:
    """One CSV cell. Text a spreadsheet would run as a formula (starting with = + - @, a tab
    or a carriage return) gets a leading apostrophe: session paths, error names and code text
    come from users."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return value
    text = value if isinstance(value, str) else json.dumps(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def csv_row(rec: dict[str, Any]) -> list[str | int | float]:
    code = rec.get("code") if isinstance(rec.get("code"), dict) else {}
    flat = {**rec, "code_kept": code.get("kept"), "code_sha256": code.get("sha256"),
            "code_lines": code.get("lines"), "code_text": code.get("text")}
    return [csv_cell(flat.get(col)) for col in CSV_COLUMNS]


def to_csv(records: Iterable[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for rec in records:
        writer.writerow(csv_row(rec))
    return out.getvalue()


def to_jsonl(records: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(rec, separators=(",", ":"), ensure_ascii=False) + "\n"
                   for rec in records)


def export_filename(who: str, rng: TimeRange, fmt: str) -> str:
    """activity-WHO-FROM-TO.csv, with only letters, digits, '.', '_' and '-' in WHO."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", who)[:64] or "records"
    return f"activity-{safe}-{day_text(rng.since)}-{day_text(rng.until)}.{fmt}"
