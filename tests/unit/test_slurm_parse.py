"""Slurm builders and parsers against output captured from the lab (tests/fixtures/slurm)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schedulers import slurm
from schedulers.durations import parse_slurm_time
from schedulers.errors import CancelError, SchedulerUnavailable, SubmitError
from schedulers.model import JobRequest, JobState, UnsafeValue
from schedulers.slurmrest import build_rest_job, make_jwt

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "slurm"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


@pytest.fixture(scope="module")
def mixed() -> dict:
    nodes = slurm.parse_node_addresses(fixture("sinfo_node_addresses.txt"))
    return slurm.parse_status(fixture("squeue_json_mixed.json"), node_addresses=nodes)


def test_every_captured_state(mixed: dict) -> None:
    expected = {"10": JobState.TIMEOUT, "11": JobState.FAILED, "12": JobState.CANCELLED,
                "13": JobState.COMPLETED, "14": JobState.RUNNING, "15": JobState.PENDING,
                "16": JobState.HELD}
    assert {k: mixed[k].state for k in expected} == expected


def test_exit_codes_and_signals(mixed: dict) -> None:
    assert (mixed["11"].exit_code, mixed["11"].signal) == (3, None)
    assert mixed["11"].reason_text == "The job failed with exit code 3."
    assert (mixed["13"].exit_code, mixed["13"].signal) == (0, None)
    assert mixed["10"].signal == 15 and mixed["10"].reason == "TimeLimit"
    assert mixed["10"].reason_text == "The job reached its walltime and was stopped."
    assert mixed["14"].exit_code is None  # not final yet


def test_running_node_and_address(mixed: dict) -> None:
    assert mixed["14"].node == "c2"
    assert mixed["14"].node_address.startswith("10.213.")
    assert mixed["10"].node_address == "127.0.0.1"


def test_pending_reason_and_estimated_start(mixed: dict) -> None:
    pending = mixed["15"]
    assert pending.reason == "Resources"
    assert pending.reason_text == "Queued: waiting for free cores, memory or GPUs"
    assert pending.estimated_start == datetime.fromtimestamp(1795357545)
    held = mixed["16"]
    assert held.reason_text == "Held by you: release the job to let it start"
    assert held.estimated_start is None


def test_controller_down_output_with_exit_zero_is_unavailable_not_empty() -> None:
    # 22.05 prints {"jobs": [], "errors": [...]} and exits 0 when slurmctld is down.
    with pytest.raises(SchedulerUnavailable) as err:
        slurm.parse_status(fixture("squeue_json_controller_down.json"), "", 0)
    assert "slurm_load_jobs" in err.value.raw


@pytest.mark.parametrize("stdout,stderr,rc", [
    ("", "slurm_load_jobs error: Unable to contact slurm controller (connect failure)", 1),
    ("{not json", "", 0),
    ('{"meta": {}}', "", 0),
    ("", "", 0),
])
def test_failed_queries_raise_unavailable(stdout: str, stderr: str, rc: int) -> None:
    with pytest.raises(SchedulerUnavailable):
        slurm.parse_status(stdout, stderr, rc)


def test_unknown_state_does_not_crash() -> None:
    doc = '{"errors": [], "jobs": [{"job_id": 1, "job_state": "WARPED", "state_reason": "None"}]}'
    status = slurm.parse_status(doc)["1"]
    assert status.state is JobState.UNKNOWN and "WARPED" in status.reason_text


def test_newer_slurm_state_lists_and_number_objects() -> None:
    doc = ('{"errors": [], "jobs": [{"job_id": 2, "job_state": ["PENDING"], "state_reason": '
           '"Priority", "start_time": {"set": true, "infinite": false, "number": 1795357545}, '
           '"exit_code": {"set": true, "number": 0}}]}')
    status = slurm.parse_status(doc)["2"]
    assert status.state is JobState.PENDING
    assert status.estimated_start == datetime.fromtimestamp(1795357545)


@pytest.mark.parametrize("reason,permanent", [
    ("PartitionTimeLimit", True), ("QOSMaxWallDurationPerJobLimit", True), ("InvalidAccount", True),
    ("InvalidQOS", True), ("BadConstraints", True), ("AssocMaxCpuPerJobLimit", True),
    ("Resources", False), ("Priority", False), ("QOSGrpCpuLimit", False),
    ("AssocGrpJobsLimit", False), ("ReqNodeNotAvail, UnavailableNodes:c1", False),
    ("SomethingNew", False),
])
def test_permanent_reasons(reason: str, permanent: bool) -> None:
    words, flag = slurm.explain_reason(reason)
    assert flag is permanent
    assert words


def test_jobcomp_final_states() -> None:
    finals = slurm.parse_jobcomp(fixture("jobcomp.txt"), ["10", "11", "12", "13", "999"])
    assert set(finals) == {"10", "11", "12", "13"}
    assert finals["10"].state is JobState.TIMEOUT
    assert (finals["11"].state, finals["11"].exit_code) == (JobState.FAILED, 3)
    assert finals["12"].state is JobState.CANCELLED
    assert finals["13"].state is JobState.COMPLETED and finals["13"].node == "c2"


def test_sacct_parsing() -> None:
    out = "41|CANCELLED by 5001|0:15|c1|None\n42|TIMEOUT|0:0|c2|TimeLimit\n43|FAILED|2:0|c1|NonZeroExitCode\n"
    finals = slurm.parse_sacct(out)
    assert finals["41"].state is JobState.CANCELLED and finals["41"].signal == 15
    assert finals["42"].state is JobState.TIMEOUT
    assert finals["43"].exit_code == 2


def test_partition_time_limits_from_sinfo() -> None:
    limits = {}
    for line in fixture("sinfo_partition_timelimits.txt").splitlines():
        name, limit = line.split()
        limits[name] = parse_slurm_time(limit)
    assert limits == {"debug": timedelta(minutes=30), "long": timedelta(days=2)}
    assert parse_slurm_time("infinite") is None  # what sinfo %l prints for no limit


# -- submit -------------------------------------------------------------------------------------

def test_script_header_from_typed_fields() -> None:
    req = JobRequest(script="exec jupyterhub-singleuser\n", name="jupyter-alice", partition="debug",
                     account="soundscape", cpus=4, memory_mb=8192, gpus=1,
                     walltime=timedelta(hours=1, seconds=1), workdir="/home/alice",
                     output="/home/alice/.hpcgate/job.log", environment={"A": "x y"}, node="c2")
    argv, script = slurm.build_submit(req)
    assert argv == ["sbatch", "--parsable"]
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    for expected in ["#SBATCH --partition=debug", "#SBATCH --account=soundscape",
                     "#SBATCH --cpus-per-task=4", "#SBATCH --mem=8192M", "#SBATCH --gres=gpu:1",
                     "#SBATCH --time=0-01:00:01", "#SBATCH --chdir=/home/alice",
                     "#SBATCH --nodelist=c2", "export A='x y'"]:
        assert expected in lines
    assert lines[-1] == "exec jupyterhub-singleuser"


@pytest.mark.parametrize("field,value", [
    ("partition", "debug\n#SBATCH --uid=0"), ("account", "a;rm -rf /"), ("name", "x y"),
    ("partition", " debug"), ("node", "c1,c2"), ("account", "$(id)"),
])
def test_unsafe_values_are_refused(field: str, value: str) -> None:
    with pytest.raises(UnsafeValue):
        slurm.build_script(JobRequest(script="true", **{field: value}))


@settings(max_examples=500)
@given(value=st.text(min_size=1, max_size=40))
def test_no_value_can_add_a_directive(value: str) -> None:
    for field in ("partition", "account", "name"):
        try:
            script = slurm.build_script(JobRequest(script="true", **{field: value},
                                                   environment={"V": value.replace("\n", "")
                                                                .replace("\r", "").replace("\0", "")}))
        except UnsafeValue:
            continue
        directives = [ln for ln in script.splitlines() if ln.startswith("#SBATCH")]
        # job name, nodes, ntasks, no-requeue, cpus, and the field itself unless it is the name
        assert len(directives) == (5 if field == "name" else 6)
        assert all("\n" not in d for d in directives)


@settings(max_examples=300)
@given(stdout=st.text(max_size=200), stderr=st.text(max_size=100), rc=st.integers(-5, 5))
def test_parse_status_only_ever_raises_unavailable(stdout: str, stderr: str, rc: int) -> None:
    try:
        slurm.parse_status(stdout, stderr, rc)
    except SchedulerUnavailable:
        pass


def test_over_limit_submit_error_in_words() -> None:
    stderr = ("sbatch: error: Batch job submission failed: Requested time limit is invalid "
              "(missing or exceeds some limit)\n")
    req = JobRequest(script="true", partition="debug", walltime=timedelta(hours=2))
    with pytest.raises(SubmitError) as err:
        slurm.parse_submit("", stderr, 1, req, timedelta(minutes=30))
    assert err.value.message == "Partition 'debug' allows at most 30 minutes; you asked for 2 hours."
    assert err.value.raw == stderr


def test_other_submit_errors_and_unreachable() -> None:
    with pytest.raises(SubmitError, match="may not use this account"):
        slurm.parse_submit("", "sbatch: error: Batch job submission failed: Invalid account or "
                           "account/partition combination specified", 1)
    with pytest.raises(SchedulerUnavailable):
        slurm.parse_submit("", "sbatch: error: Batch job submission failed: Unable to contact slurm "
                           "controller (connect failure)", 1)
    assert slurm.parse_submit("1234;lab\n", "", 0) == "1234"


def test_cancel_of_finished_job_is_not_an_error() -> None:
    slurm.parse_cancel("", "scancel: error: Kill job error on job id 5: Job/step already completing "
                       "or completed\n", 1)
    slurm.parse_cancel("", "scancel: error: Kill job error on job id 5: Invalid job id specified\n", 1)
    with pytest.raises(CancelError):
        slurm.parse_cancel("", "scancel: error: Kill job error on job id 5: Access/permission denied\n", 1)


def test_rest_job_body_and_jwt() -> None:
    req = JobRequest(script="true\n", partition="debug", cpus=2, memory_mb=100,
                     walltime=timedelta(minutes=90, seconds=1), output="/home/bob/x.log")
    body = build_rest_job(req, {"PATH": "/usr/bin"})
    assert body["job"]["time_limit"] == 91
    assert body["job"]["partition"] == "debug" and body["job"]["memory_per_node"] == 100
    with pytest.raises(UnsafeValue):
        build_rest_job(JobRequest(script="true", node="c2"), {})
    token = make_jwt(b"k" * 32, "bob", lifespan=60, now=1000)
    import base64
    import json
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert claims == {"iat": 1000, "exp": 1060, "sun": "bob"}
