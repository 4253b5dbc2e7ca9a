"""The Activity page's parts without a hub: who sees whom, ranges and retention, the timeline's
buckets and chart, the template's escaping, CSV safe against formulas, the store's queries and
purge task, and `hpcgate activity export` on a real store file."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import jinja2
import pytest

from gateway.hub.activity_access import led_groups, scope_for
from gateway.hub.activity_page import template_text
from gateway.hub.activity_store import ActivityStore
from gateway.hub.activity_view import (
    CSV_COLUMNS,
    DAY,
    HOUR,
    TimeRange,
    chart,
    csv_cell,
    export_filename,
    parse_when,
    summarize,
    time_range,
    to_csv,
    to_jsonl,
)
from gateway.job.activity.records import Origin, iso, keep_code, problems, schema

NOW = 1_900_000_000.0  # 2030-03-17T17:46:40Z
VIEWERS = {"soundscape-lab": ["soundscape-leads"], "class-a": ["teachers"]}
MEMBERS = {"soundscape-lab": ["alice", "bob"], "class-a": ["s1", "s2"], "hub-admins": ["carol"]}


def execution(user: str = "alice", at: float = NOW - HOUR, kernel: str = "python3",
              outcome: str = "ok", path: str | None = "study.ipynb", code: str = "1+1") -> dict:
    rec = Origin(user=user, server="", job_id="7", node="c1").record(
        "execution", time=iso(at), kernel_id="k-" + kernel, kernel_name=kernel,
        language={"python3": "python", "bash": "bash"}.get(kernel, kernel), session_path=path,
        requested=iso(at), started=iso(at + 0.01), ended=None if outcome == "unfinished" else iso(at + 0.5),
        duration_ms=None if outcome == "unfinished" else 490.0, outcome=outcome,
        ename="ZeroDivisionError" if outcome == "error" else None, interrupted=False,
        execution_count=1, cell_id="c1", msg_id="m" + str(at), client="websocket",
        code=keep_code("full", code), code_bytes=len(code), output_bytes=3)
    assert problems(rec) == []
    return rec


def test_each_user_sees_only_their_own_and_leads_their_groups_members() -> None:
    bob = scope_for("bob", ["hpc-users", "soundscape-lab"], VIEWERS, MEMBERS)
    assert bob.allows_user("bob") and not bob.allows_user("alice") and bob.groups == ()
    assert not bob.allows_group("soundscape-lab")
    alice = scope_for("alice", ["soundscape-lab", "soundscape-leads"], VIEWERS, MEMBERS)
    assert alice.allows_user("bob") and alice.allows_user("alice")
    assert not alice.allows_user("carol") and not alice.allows_user("s1")
    assert alice.groups == ("soundscape-lab",) and not alice.allows_group("class-a")
    teacher = scope_for("tim", ["teachers"], VIEWERS, MEMBERS)
    assert sorted(teacher.users) == ["s1", "s2"] and not teacher.allows_user("alice")
    operator = scope_for("carol", ["hub-admins"], VIEWERS, MEMBERS, everyone=True,
                         all_groups=["hpc-users"])
    assert operator.allows_user("anyone") and operator.groups == ("class-a", "hpc-users",
                                                                  "soundscape-lab")
    service = scope_for(None, ["soundscape-leads"], VIEWERS, MEMBERS)  # a service: no groups
    assert not service.allows_user("alice") and service.groups == ()
    assert led_groups(["teachers", "soundscape-leads"], VIEWERS) == ["class-a", "soundscape-lab"]


def test_times_ranges_and_retention() -> None:
    assert parse_when("2030-03-17", NOW) == NOW - (17 * HOUR + 46 * 60 + 40)
    assert parse_when("2030-03-17", NOW, end=True) == pytest.approx(parse_when("2030-03-18", NOW))
    assert parse_when("7d", NOW) == NOW - 7 * DAY and parse_when("12h", NOW) == NOW - 12 * HOUR
    assert parse_when("2030-03-17T10:00", NOW) == parse_when("2030-03-17T11:00+01:00", NOW)
    with pytest.raises(ValueError, match="is not a time"):
        parse_when("last tuesday", NOW)
    rng = time_range(None, None, NOW, timedelta(days=180))
    assert (rng.since, rng.until, rng.clipped, rng.hourly) == (NOW - 7 * DAY, NOW, False, True)
    old = time_range("2020-01-01", None, NOW, timedelta(days=30))
    assert old.clipped and old.since == NOW - 30 * DAY and not old.hourly
    with pytest.raises(ValueError, match="after its end"):
        time_range("2030-03-10", "2030-03-01", NOW, timedelta(days=180))


def test_the_timeline_counts_per_hour_by_kernel_and_marks_errors() -> None:
    rng = TimeRange(NOW - 5 * HOUR, NOW)
    recs = [execution(at=NOW - 3 * HOUR + 60), execution(at=NOW - 3 * HOUR + 120, kernel="bash"),
            execution(at=NOW - 3 * HOUR + 180, outcome="error"),
            execution(at=NOW - HOUR, outcome="unfinished"),
            Origin(user="alice").record("kernel_start", time=iso(NOW - 2 * HOUR), kernel_id="k",
                                        kernel_name="python3", language="python",
                                        session_path=None, reason=None)]
    s = summarize(recs, rng)
    assert s.step == HOUR and len(s.buckets) == 6 and s.series == ["bash", "python3"]
    busy = next(b for b in s.buckets if b.total)
    assert busy.counts == {"python3": 2, "bash": 1} and busy.errors == 1
    assert (s.executions, s.errors, s.events) == (4, 2, 1)
    assert {k["kernel"]: k["executions"] for k in s.kernels} == {"python3": 3, "bash": 1}
    c = chart(s)
    assert len(c.bars) == 3 and len(c.error_marks) == 2 and c.y_max == 3 and not c.empty
    assert {name for name, _ in c.legend} == {"bash", "python3"}
    tallest = max(c.bars, key=lambda r: r.h)
    assert tallest.h == pytest.approx(c.plot_h * 2 / 3, abs=0.01)  # 2 of 3 at the busiest hour
    by_member = summarize(recs + [execution(user="bob", at=NOW - 2 * HOUR)], rng, by="user")
    assert by_member.series == ["alice", "bob"]
    assert [(m["user"], m["executions"]) for m in by_member.members] == [("alice", 4), ("bob", 1)]
    month = summarize(recs, TimeRange(NOW - 30 * DAY, NOW))
    assert month.step == DAY and len(month.buckets) == 31


def render(**ns: object) -> str:
    """The real template, on a stand-in for JupyterHub's page.html, with JupyterHub's autoescape."""
    env = jinja2.Environment(loader=jinja2.DictLoader({
        "page.html": "<html>{% block main %}{% endblock main %}</html>",
        "activity.html": template_text()}), autoescape=True)
    return env.get_template("activity.html").render(**ns)


def alice_page(recs: list[dict], **ns: object) -> str:
    """alice's own page over the last five hours with `recs`, as the handler fills it in;
    `ns` replaces any of its values."""
    from gateway.hub.activity_access import ActivityScope
    from gateway.hub.activity_page import Target, _ms
    from gateway.hub.activity_view import time_text

    s = summarize(recs, TimeRange(NOW - 5 * HOUR, NOW))
    return render(**{
        "target": Target(["alice"], "alice"), "scope": ActivityScope("alice", frozenset(), ()),
        "summary": s, "chart": chart(s), "recent": recs, "shown": len(recs), "total": len(recs),
        "since": "a", "until": "b", "clipped": False, "retention_days": 180, "cutoff": "x",
        "oldest": None, "user_choices": ["alice"], "group_choices": [], "csv_url": "c",
        "jsonl_url": "j", "page_url": "/hub/activity", "time_text": time_text, "hourly": True,
        "ms": _ms, **ns})


def test_the_page_escapes_what_users_wrote() -> None:
    evil = '<script>alert("x")</script>.ipynb'
    recs = [execution(path=evil), execution(kernel="<b>k</b>", outcome="error"),
            Origin(user="alice").record("notebook_open", time=iso(NOW - HOUR), path=evil)]
    html = alice_page(recs, csv_url="/hub/activity/export?x=1&y=2")
    assert "<script>" not in html and "<b>k</b>" not in html
    assert "&lt;script&gt;" in html and "&lt;b&gt;k&lt;/b&gt;" in html
    assert 'id="activity-chart"' in html and html.count('class="bar"') == 2
    assert html.count('class="error-mark"') == 1 and "x=1&amp;y=2" in html


def test_csv_cells_that_look_like_formulas_are_defused() -> None:
    for bad in ("=HYPERLINK(\"http://x\")", "+1", "-2+3", "@SUM(A1)", "\tx", "\rx"):
        assert csv_cell(bad) == "'" + bad
    assert csv_cell("study.ipynb") == "study.ipynb" and csv_cell(None) == ""
    assert csv_cell(True) == "true" and csv_cell(490.0) == 490.0 and csv_cell(0) == 0
    rec = execution(path="=cmd|' /C calc'!A0", code="=1+1\nprint(2)")
    rows = list(csv.reader(io.StringIO(to_csv([rec]))))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == 2
    row = dict(zip(CSV_COLUMNS, rows[1], strict=True))
    assert row["session_path"] == "'=cmd|' /C calc'!A0" and row["code_text"] == "'=1+1\nprint(2)"
    assert row["code_lines"] == "2" and row["outcome"] == "ok" and row["user"] == "alice"
    assert [json.loads(x)["id"] for x in to_jsonl([rec, rec]).splitlines()] == [rec["id"]] * 2
    name = export_filename('../a"b', TimeRange(NOW - DAY, NOW), "csv")
    assert name == "activity-.._a_b-2030-03-16-2030-03-17.csv"


async def test_store_reads_by_users_and_purges_on_its_own(tmp_path: Path) -> None:
    db = ActivityStore(db_path=str(tmp_path / "a.sqlite"), purge_every=0.05)
    recs = [execution("alice", NOW - 3 * DAY), execution("bob", NOW - 2 * DAY),
            execution("carol", NOW - DAY), execution("alice", NOW - 40 * DAY)]
    await db.insert(recs, timedelta(days=180), NOW)
    assert [r["user"] for r in await db.records_of(["alice", "bob"])] == ["alice", "alice", "bob"]
    assert await db.records_of([]) == []
    newest = await db.records_of(None, limit=2, newest_first=True)
    assert [r["user"] for r in newest] == ["carol", "bob"]
    assert await db.users() == ["alice", "bob", "carol"]
    assert await db.oldest(["bob", "carol"]) == pytest.approx(NOW - 2 * DAY)
    # The task deletes what is past the retention at its next round, without any insert.
    import time

    gone_before = NOW - 30 * DAY - time.time()  # a retention that puts the cutoff at NOW - 30 d
    db.keep_purging(lambda: timedelta(seconds=-gone_before))
    for _ in range(100):
        if len(await db.records_of(None)) == 3:
            break
        await asyncio.sleep(0.02)
    assert sorted(r["user"] for r in await db.records_of(None)) == ["alice", "bob", "carol"]
    await db.close()


def test_the_export_command_reads_the_store_as_an_admin(tmp_path: Path) -> None:
    path = tmp_path / "hpcgate-activity.sqlite"
    db = ActivityStore(db_path=str(path))
    recs = [execution("root", NOW - DAY, path="=evil"), execution("nobody", NOW - DAY)]
    asyncio.run(db.insert(recs, timedelta(days=3650), NOW))
    asyncio.run(db.close())

    def export(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway.cli", "activity", "export",
                               "--db", str(path), *args], capture_output=True, text=True, timeout=60)
    out = export("--user", "root", "--format", "csv", "--until", "2031-01-01")  # NOW is ahead
    assert out.returncode == 0, out.stderr
    rows = list(csv.reader(io.StringIO(out.stdout)))
    assert len(rows) == 2 and rows[1][CSV_COLUMNS.index("session_path")] == "'=evil"
    assert rows[1][CSV_COLUMNS.index("user")] == "root"
    out = export("--group", "root", "--format", "jsonl", "--since", "2030-03-01",  # root's group
                 "--until", "2031-01-01")
    assert [json.loads(x)["user"] for x in out.stdout.splitlines()] == ["root"], out.stderr
    assert export("--user", "root", "--format", "jsonl", "--until", "2030-01-01").stdout == ""
    bad = export("--user", "root", "--format", "csv", "--since", "soon")
    assert bad.returncode == 2 and "is not a time" in bad.stderr
    missing = export("--user", "root", "--format", "csv", "--db", str(tmp_path / "none"))
    assert missing.returncode == 1 and "cannot read the activity store" in missing.stderr
    assert export("--format", "csv").returncode == 2  # --user or --group is required


def test_every_field_of_the_schema_has_a_csv_column() -> None:
    doc = schema()
    fields = set(doc["properties"])
    for name, part in doc["$defs"].items():
        if name != "time":
            fields |= set(part.get("properties", {}))
    fields = (fields - {"code"}) | {"code_kept", "code_sha256", "code_lines", "code_text"}
    assert fields - set(CSV_COLUMNS) == set()
    assert {"bytes", "range_start", "file_bytes"} <= set(CSV_COLUMNS)  # kind download


def test_a_download_shows_its_file_and_bytes() -> None:
    rec = Origin(user="alice").record("download", time=iso(NOW - HOUR), path="<i>dawn</i>.wav",
                                      bytes=12 << 20, range_start=4096, file_bytes=1 << 30)
    assert problems(rec) == []
    html = alice_page([rec])
    assert 'id="activity-off"' not in html
    off = alice_page([rec], recording=False)
    assert 'id="activity-off"' in off and "records no activity now" in off
    row = html.split('data-kind="download"')[1].split("</tr>")[0]
    assert "&lt;i&gt;dawn&lt;/i&gt;.wav" in row and "12.0 MiB sent from byte 4096" in row
    rows = list(csv.reader(io.StringIO(to_csv([rec]))))
    cells = dict(zip(CSV_COLUMNS, rows[1], strict=True))
    assert (cells["bytes"], cells["range_start"], cells["file_bytes"]) == \
        (str(12 << 20), "4096", str(1 << 30))
