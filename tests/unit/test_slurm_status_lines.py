"""The watcher's Slurm query: `squeue -j OUR_IDS -O ...`, built and parsed (tests/fixtures/slurm)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schedulers import slurm
from schedulers.errors import SchedulerUnavailable
from schedulers.model import JobState, UnsafeValue

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "slurm"
NODES = {"c1": "127.0.0.1", "c2": "10.213.119.2"}


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def captured(name: str) -> tuple[str, str, int]:
    return fixture(f"{name}.stdout"), fixture(f"{name}.stderr"), int(fixture(f"{name}.rc"))


@pytest.fixture(scope="module")
def lines() -> dict:
    return slurm.parse_status_lines(fixture("squeue_status_lines.txt"), node_addresses=NODES)


def test_build_names_only_our_ids_and_every_field_the_parser_reads() -> None:
    argv = slurm.build_status(["21706", "21707"])
    assert argv[:6] == ["squeue", "-h", "-t", "all", "-j", "21706,21707"]
    assert argv[6] == "-O"
    assert [f.split(":")[0] for f in argv[7].split(",")] == [name for name, _ in slurm.STATUS_FIELDS]
    assert "--json" not in argv  # 22.05's --json ignores -j: every job on the cluster


def test_build_refuses_what_is_not_a_job_id_and_an_empty_list() -> None:
    with pytest.raises(UnsafeValue):
        slurm.build_status(["123", "1,2"])
    with pytest.raises(UnsafeValue):
        slurm.build_status(["-u root"])
    with pytest.raises(ValueError):
        slurm.build_status([])
    assert slurm.build_status(["7_3"])[5] == "7_3"  # an array task


def test_every_captured_state(lines: dict) -> None:
    expected = {"21706": JobState.TIMEOUT, "21707": JobState.RUNNING, "21708": JobState.FAILED,
                "21709": JobState.COMPLETED, "21710": JobState.CANCELLED,
                "21711": JobState.RUNNING, "21712": JobState.PENDING, "21713": JobState.HELD}
    assert {k: v.state for k, v in lines.items()} == expected  # 99999 (unknown) is absent


def test_exit_codes_signals_and_final_words(lines: dict) -> None:
    failed = lines["21708"]
    assert (failed.exit_code, failed.signal, failed.reason) == (3, None, "NonZeroExitCode")
    assert failed.reason_text == "The job failed with exit code 3."
    assert (lines["21709"].exit_code, lines["21709"].signal) == (0, None)
    timeout = lines["21706"]
    assert (timeout.signal, timeout.reason) == (15, "TimeLimit")
    assert timeout.reason_text == "The job reached its walltime and was stopped."
    assert lines["21710"].reason_text == "The job was cancelled."
    assert lines["21707"].exit_code is None  # not final yet


def test_nodes_addresses_and_estimates(lines: dict) -> None:
    running = lines["21707"]
    assert (running.node, running.node_address, running.reason) == ("c2", NODES["c2"], "")
    assert running.estimated_start is None  # only waiting jobs carry one
    pending = lines["21712"]
    assert pending.node is None and pending.reason == "Resources"
    assert pending.estimated_start == datetime(2026, 12, 6, 19, 46, 43)
    assert pending.reason_text == "Queued: waiting for free cores, memory or GPUs"
    held = lines["21713"]
    assert held.estimated_start is None and held.node is None
    assert held.reason_text == "Held by you: release the job to let it start"
    assert held.raw["end_time"] is None and running.raw["end_time"] is not None


def test_one_unknown_id_is_an_empty_answer_not_a_dead_controller() -> None:
    stdout, stderr, rc = captured("squeue_status_one_unknown")
    assert rc == 1 and "Invalid job id specified" in stderr
    assert slurm.parse_status_lines(stdout, stderr, rc) == {}


def test_controller_down_raises_unavailable() -> None:
    stdout, stderr, rc = captured("squeue_status_controller_down")
    with pytest.raises(SchedulerUnavailable):
        slurm.parse_status_lines(stdout, stderr, rc)


def test_unknown_id_beside_another_error_is_still_a_failure() -> None:
    stderr = ("slurm_load_jobs error: Invalid job id specified\n"
              "squeue: error: Unable to contact slurm controller (connect failure)\n")
    with pytest.raises(SchedulerUnavailable):
        slurm.parse_status_lines("", stderr, 1)


def test_unreadable_answer_is_unavailable_and_a_stray_line_is_skipped(lines: dict) -> None:
    with pytest.raises(SchedulerUnavailable):
        slurm.parse_status_lines("squeue: something else entirely\n")
    text = "a warning line\n" + fixture("squeue_status_lines.txt")
    assert set(slurm.parse_status_lines(text)) == set(lines)


def test_same_answer_as_the_json_record_for_the_same_fields() -> None:
    # The line parser maps onto the JSON record shape, so both share status_from_job's words.
    record = slurm.record_from_line("5|CANCELLED by 5001|None|c1|c1|N/A|Unknown|15|")
    assert record is not None and record["job_state"] == "CANCELLED"
    assert record["start_time"] is None and record["end_time"] is None and record["exit_code"] == 15
    assert slurm.status_from_job(record).state is JobState.CANCELLED


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300), st.text(max_size=200), st.integers(min_value=0, max_value=255))
def test_parse_only_ever_raises_unavailable(stdout: str, stderr: str, rc: int) -> None:
    try:
        slurm.parse_status_lines(stdout, stderr, rc)
    except SchedulerUnavailable:
        pass
