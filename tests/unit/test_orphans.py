"""Which of the scheduler's jobs nobody owns, from real PBS output (no PBS server runs here)."""

from __future__ import annotations

from gateway.admin.orphans import orphan_rows
from schedulers import pbs
from tests.helpers.paths import SHARED

AURORA = SHARED / "fixtures" / "pbs" / "pbspro2022_aurora_qstat_xf_json_multi_8jobs_Q_H_F.json"
HOST = "aurora-pbs-0001.hostmgmt.cm.aurora.alcf.anl.gov"


def test_pbs_jobs_by_name_prefix_unowned_and_unfinished_only() -> None:
    jobs = pbs.parse_status(AURORA.read_text())
    # Three held nekRS_pink jobs of mmin; one is owned by a server, so two are orphans.
    rows = orphan_rows(jobs, owned={f"4905459.{HOST}"}, prefix="nekRS_")
    assert [(r["job_id"], r["user"], r["state"]) for r in rows] == [
        (f"4905429.{HOST}", "mmin", "HELD"), (f"4905472.{HOST}", "mmin", "HELD")]
    # Finished (deleted, F) jobs are never orphans: nothing to cancel.
    assert orphan_rows(jobs, owned=set(), prefix="sco10") == []


def test_the_listing_is_current_jobs_only() -> None:
    assert pbs.build_list_current() == ["qstat", "-f", "-F", "json"]  # no -x: no history
