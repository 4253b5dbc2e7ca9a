"""Which of the scheduler's jobs nobody owns, from real PBS output (no PBS server runs here)."""

from __future__ import annotations

import pytest

from gateway.admin import orphans
from gateway.admin.orphans import orphan_rows
from schedulers import pbs
from schedulers.model import JobState, JobStatus
from schedulers.registry import SchedulerSettings
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


async def test_orphans_come_from_the_adapters_job_listing(monkeypatch: pytest.MonkeyPatch) -> None:
    listed = {"7": JobStatus("7", JobState.RUNNING, raw={"name": "hpcgate-alice", "user_name": "alice"}),
              "8": JobStatus("8", JobState.RUNNING, raw={"name": "hpcgate-bob", "user_name": "bob"}),
              "9": JobStatus("9", JobState.RUNNING, raw={"name": "other", "user_name": "carol"})}

    class Lister:
        async def list_jobs(self) -> dict[str, JobStatus]:
            return listed

    monkeypatch.setattr(orphans, "make_scheduler", lambda settings, runner: Lister())
    monkeypatch.setattr(orphans, "owned_job_ids", lambda db_url: {"8"})
    for kind in ("slurm", "pbs"):  # no branch by kind: the adapter lists its jobs
        rows = await orphans.find_orphans(SchedulerSettings(kind=kind), "sqlite://")
        assert [(r["job_id"], r["user"]) for r in rows] == [("7", "alice")]
