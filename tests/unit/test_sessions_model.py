"""How the sessions page words a session's end, and what it keeps of ended sessions."""

from __future__ import annotations

from types import SimpleNamespace

from gateway.hub.sessions import HISTORY_KEPT, how_it_ended, remember_end, request_summary
from schedulers.model import JobState, JobStatus


def status(state: JobState, **kw: object) -> JobStatus:
    return JobStatus(job_id="7", state=state, **kw)  # type: ignore[arg-type]


def test_each_ending_in_words() -> None:
    assert how_it_ended(status(JobState.TIMEOUT), False)[0] == "time-limit"
    # The launcher's word beats the job's final state (it exits 0 after the scheduler's signal).
    assert how_it_ended(status(JobState.COMPLETED, exit_code=0), False, "time-limit") == (
        "time-limit", "Reached its time limit.")
    assert how_it_ended(status(JobState.CANCELLED), True)[0] == "stopped"
    assert how_it_ended(status(JobState.CANCELLED), False)[0] == "cancelled"
    assert how_it_ended(status(JobState.FAILED, raw={"job_state": "NODE_FAIL"}), False)[0] == "node-failure"
    assert how_it_ended(status(JobState.FAILED, raw={"job_state": "OUT_OF_MEMORY"}), False)[0] == \
        "out-of-memory"
    assert how_it_ended(status(JobState.FAILED, exit_code=3), False) == ("exit-code",
                                                                         "Failed with exit code 3.")
    assert how_it_ended(status(JobState.RUNNING), False, fallback=("connection-lost", "x")) == (
        "connection-lost", "x")


def test_history_keeps_each_job_once_newest_first() -> None:
    spawner = SimpleNamespace(job_id="", history=[], ending="", job_request={}, user_options={},
                              submitted_at=0.0)
    for n in range(HISTORY_KEPT + 2):
        spawner.job_id = str(n)
        remember_end(spawner, status(JobState.COMPLETED, exit_code=0), False)
        remember_end(spawner, status(JobState.COMPLETED, exit_code=0), True)  # seen twice: once
    assert [h["job_id"] for h in spawner.history] == [str(n) for n in range(HISTORY_KEPT + 1, 1, -1)]
    assert spawner.history[0]["end_kind"] == "finished"


def test_request_summary_is_json_safe() -> None:
    from datetime import timedelta

    out = request_summary({"partition": "debug", "cpus": 2, "memory_mb": 1024, "gpus": 0,
                           "walltime": timedelta(minutes=20), "account": None, "node": None})
    assert out["walltime_seconds"] == 1200 and out["partition"] == "debug"


def test_a_job_that_ended_by_itself_at_its_walltime_counts_as_the_time_limit() -> None:
    """The launcher's report of the end signal lost (a loaded hub): the times still tell."""
    import time
    from datetime import datetime

    def ended_after(ran: float) -> str:
        spawner = SimpleNamespace(job_id="9", history=[], ending="", user_options={},
                                  job_request={"walltime_seconds": 600}, submitted_at=0.0)
        started = datetime.fromtimestamp(time.time() - ran)
        remember_end(spawner, status(JobState.COMPLETED, exit_code=0, started=started), False)
        return spawner.history[0]["end_kind"]

    assert ended_after(520) == "time-limit"  # 80 s before the limit: the signal's doing
    assert ended_after(300) == "finished"  # half way: the user shut it down


def test_a_server_a_restarted_hub_still_checks_shows_its_job_and_can_be_stopped() -> None:
    """After a hub restart JupyterHub keeps a queued server "pending check" until its job
    reports: the card says queued (or starting), not "Not running", so the page offers Stop."""
    from gateway.hub.sessions import _state

    checking = SimpleNamespace(pending="check", ready=False)
    assert _state(checking, status(JobState.PENDING)) == "queued"
    assert _state(checking, status(JobState.RUNNING, node="c2")) == "starting"
    assert _state(checking, None) == "starting"
    assert _state(checking, status(JobState.CANCELLED)) == "ended"
