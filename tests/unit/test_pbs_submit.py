"""PBS qsub script builder, qsub output and errors, and qdel errors, against ../shared/fixtures/pbs."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schedulers import pbs
from schedulers.errors import CancelError, SchedulerUnavailable, SubmitError
from schedulers.model import JobRequest, UnsafeValue
from tests.helpers.paths import SHARED

PBS = SHARED / "fixtures" / "pbs"


def text_of(*parts: str) -> str:
    return PBS.joinpath(*parts).read_text()


FULL = JobRequest(
    script="exec python -m gateway.job.launcher /home/alice/.hpcgate/default/launch.json\n",
    name="hpcgate-alice", partition="debug", account="ecology", cpus=4, memory_mb=16384, gpus=1,
    walltime=timedelta(hours=1, minutes=30, seconds=0.2), workdir="/home/alice",
    environment={"PATH": "/opt/x/bin:/usr/bin", "GREETING": "it's $HOME"},
    output="/home/alice/.hpcgate/default/job.log", node="x3006c0s31b1n0",
    extra_directives=("-l filesystems=home:eagle",))


def test_full_script() -> None:
    argv, script = pbs.build_qsub(FULL)
    assert argv == ["qsub"]  # the script travels on stdin; no -v (job environments are public)
    assert script == (
        "#!/bin/bash\n"
        "#PBS -N hpcgate-alice\n"
        "#PBS -S /bin/bash\n"
        "#PBS -q debug\n"
        "#PBS -A ecology\n"
        "#PBS -l select=1:ncpus=4:mem=16384mb:ngpus=1:host=x3006c0s31b1n0\n"
        "#PBS -l walltime=01:30:01\n"
        "#PBS -o /home/alice/.hpcgate/default/job.log\n"
        "#PBS -j oe\n"
        "#PBS -k oed\n"
        "#PBS -l filesystems=home:eagle\n"
        ": end of the PBS header\n"
        "export PATH='/opt/x/bin:/usr/bin'\n"
        "export GREETING='it'\"'\"'s $HOME'\n"
        "cd '/home/alice' || exit 1\n"
        "exec python -m gateway.job.launcher /home/alice/.hpcgate/default/launch.json\n")


def test_minimal_script_uses_the_servers_defaults() -> None:
    _, script = pbs.build_qsub(JobRequest(script="true"))
    assert script == ("#!/bin/bash\n#PBS -N hpcgate\n#PBS -S /bin/bash\n#PBS -l select=1:ncpus=1\n"
                      ": end of the PBS header\ntrue\n")


@pytest.mark.parametrize("changes", [
    {"name": "x\n#PBS -q evil"}, {"partition": "debug -q long"}, {"account": "a;b"},
    {"node": "c1:ncpus=64"}, {"output": "/home/a b/log"}, {"output": "/home/a:b/log"},
    {"output": "relative/log"}, {"workdir": "/home/a\n#PBS -l walltime=999:00:00"},
    {"environment": {"BAD NAME": "x"}}, {"environment": {"X": "a\nb"}}, {"cpus": 0}, {"cpus": True},
    {"memory_mb": -1}, {"gpus": -1}, {"extra_directives": ("-l a=1\n#PBS -q evil",)},
    {"extra_directives": ("#PBS ",)},
])
def test_unsafe_values_are_refused(changes: dict) -> None:
    with pytest.raises(UnsafeValue):
        pbs.build_qsub(JobRequest(script="true", **changes))


def test_a_body_starting_with_a_directive_is_not_read_as_one() -> None:
    _, script = pbs.build_qsub(JobRequest(script="#PBS -q evil\ntrue"))
    header = script.split(": end of the PBS header\n")[0]
    assert "evil" not in header


anything = st.text(st.characters(codec="utf-8"), max_size=30)
hostile = st.one_of(anything, st.sampled_from(
    ["x\n#PBS -q evil", "x\r#PBS -l walltime=999:00:00", "a b", "/home/a:b", "/x\0", "\n"]))
name = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,20}", fullmatch=True)
path = st.from_regex(r"/[a-z0-9_./-]{1,30}", fullmatch=True)
FIELDS = ["name", "partition", "account", "node", "workdir", "output", "env_name", "env_value",
          "directive"]


@settings(max_examples=400, deadline=None)
@given(valid=st.fixed_dictionaries({
           "name": name, "partition": st.one_of(st.none(), name), "account": st.one_of(st.none(), name),
           "node": st.one_of(st.none(), name), "workdir": st.one_of(st.none(), path),
           "output": st.one_of(st.none(), path), "env_name": st.from_regex(r"[A-Z_][A-Z0-9_]{0,10}",
                                                                          fullmatch=True),
           "env_value": st.text(max_size=20).filter(lambda v: not set(v) & set("\0\n\r")),
           "directive": st.sampled_from(["-l filesystems=home:eagle", "-l place=excl"])}),
       field=st.one_of(st.none(), st.sampled_from(FIELDS)), evil=hostile,
       cpus=st.integers(-2, 300), memory=st.one_of(st.none(), st.integers(-5, 10**7)),
       gpus=st.integers(-1, 9), seconds=st.one_of(st.none(), st.integers(0, 10**7)))
def test_no_field_can_add_a_line_or_a_directive(valid: dict, field: str | None, evil: str, cpus: int,
                                                 memory: int | None, gpus: int, seconds: int | None
                                                 ) -> None:
    """Any one field set to any text: refused, or the script has exactly the lines the fields make."""
    values = {**valid, **({field: evil} if field else {})}
    req = JobRequest(script="echo body", name=values["name"], partition=values["partition"],
                     account=values["account"], node=values["node"], workdir=values["workdir"],
                     output=values["output"], environment={values["env_name"]: values["env_value"]},
                     extra_directives=(values["directive"],), cpus=cpus, memory_mb=memory, gpus=gpus,
                     walltime=None if seconds is None else timedelta(seconds=seconds))
    try:
        _, script = pbs.build_qsub(req)
    except UnsafeValue:
        assert field is not None or cpus < 1 or gpus < 0 or (memory is not None and memory < 1)
        return
    lines = script.split("\n")
    assert lines[-1] == "" and lines[-2] == "echo body"
    header = lines[1:lines.index(": end of the PBS header")]
    expected = 4 + bool(req.partition) + bool(req.account) + (seconds is not None) + 3 * bool(req.output)
    assert len(header) == expected
    assert all(line.startswith("#PBS ") and line[5:].strip() for line in header)
    # After the header: exactly the export, the cd and the body, and no directive among them.
    rest = lines[len(header) + 2:-1]
    assert len(rest) == 1 + bool(req.workdir) + 1
    assert not any(line.startswith("#PBS") for line in rest)


# -- qsub output ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "job_id"), [
    ("torque_vanderbilt_qsub_success.console.txt", "39352.master.cl.vanderbilt.edu"),
    ("openpbs_nasa_qsub_success_and_json_numeric_env_bug.console.txt", "53.testpbs.nas.nasa.gov"),
])
def test_job_id_from_a_console_capture(name: str, job_id: str) -> None:
    # The prompt lines around qsub's output are not job ids; qsub's own line is.
    assert pbs.parse_qsub(text_of("qsub", name)) == job_id


def test_job_id_annotated_by_the_docs() -> None:
    line = text_of("qsub", "pbspro_metacentrum_qsub_batch_success.console_ANNOTATED.txt").splitlines()[1]
    qsub_output = line.split(" # ")[0] + "\n"  # the "# job ID is ..." comment was added by the doc
    assert pbs.parse_qsub(qsub_output) == "11733571.meta-pbs.metacentrum.cz"
    training = text_of("errors", "pbspro_usyd_training_qsub_then_qdel_finished.console.txt")
    assert pbs.parse_qsub(training.splitlines()[1]) == "463292.pbstraining"


@pytest.mark.parametrize("name", ["pbspro_cirrus_qsub_interactive_waiting.console.txt",
                                  "pbspro_metacentrum_interactive_walltime_killed.console.txt"])
def test_interactive_qsub_lines_are_not_a_job_id(name: str) -> None:
    with pytest.raises(SubmitError, match="qsub printed no job id"):
        pbs.parse_qsub(text_of("qsub", name).splitlines()[-1])


def test_unknown_queue() -> None:
    # Seen only as text (SOURCES.md §5): "qsub: Unknown queue".
    assert pbs.parse_submit_error("qsub: Unknown queue\n", JobRequest(script="true", partition="gpu")) == (
        "Queue 'gpu' does not exist.")
    assert pbs.parse_submit_error("qsub: Unknown queue\n") == "The default queue does not exist."


def test_parse_submit_success() -> None:
    assert pbs.parse_submit("157.pbs\n", "", 0) == "157.pbs"


# -- qsub errors in words ---------------------------------------------------------------------------------

QEXP = pbs.parse_queues(text_of("pbspro20_it4i_barbora_qstat_Qf_json_queue_qexp.json"))["qexp"]
POLARIS_QUEUES = pbs.parse_queues(text_of("pbspro2022_polaris_qstat_Qf_json_4queues_ABRIDGED.json"))


@pytest.mark.parametrize(("name", "partition", "sentence"), [
    ("pbspro2022_alcf_qsub_hook_reject_filesystems_required.DOCTEXT.txt", "debug",
     "The site's submission rules need the resource 'filesystems': the portal's administrators must "
     "add it to the job directives."),
    ("pbspro2022_alcf_qsub_rejected_by_all_destinations.DOCTEXT.txt", "prod",
     "No execution queue that queue 'prod' routes to accepts this request (its size or walltime fits "
     "none of them)."),
    ("pbspro2022_alcf_qsub_would_exceed_per_user_limit.DOCTEXT.txt", None,
     "You have reached a per-user limit of queue 'generic' (on jobs or resources): end one of your "
     "jobs there and try again."),
    ("pbspro19.1.3_qsub_failed_to_save_job.stderr.txt", None,
     "The PBS server could not save the job; try again later, and if it persists ask the "
     "administrators to look at the server's log."),
    ("torque_qsub_exceeds_max_walltime.stderr.txt", "batch",
     "The walltime you asked for is more than queue 'batch' allows."),
    ("torque_qsub_submit_error_exceeds_max_walltime.stderr.txt", "batch",
     "The walltime you asked for is more than queue 'batch' allows."),
    ("torque_qsub_submit_error_exceeds_max_mem.stderr.txt", None,
     "The memory you asked for is more than the default queue allows."),
    ("torque_qsub_exceeds_queue_limits_cannot_locate_feasible_nodes.stderr.txt", None,
     "No node can hold the cores, memory or GPUs you asked for (or none is up)."),
    ("torque_gc3pie_MOCK_qsub_failed_resources.stderr.txt", None,
     "No node can hold the cores, memory or GPUs you asked for (or none is up)."),
    ("torque_gc3pie_MOCK_qsub_failed_acl.stderr.txt", "cm1",
     "You are not allowed to submit to queue 'cm1'."),
    ("pbs_sirna_qdel_qsub_errors.console_EXCERPTS.txt", None,
     "PBS refused the job: script file:: No such file or directory"),
])
def test_submit_errors_in_words(name: str, partition: str | None, sentence: str) -> None:
    stderr = text_of("errors", name)
    if name.startswith("pbs_sirna"):
        stderr = stderr.splitlines()[-1] + "\n"  # the qsub line of the excerpts
    req = JobRequest(script="true", partition=partition)
    with pytest.raises(SubmitError) as err:
        pbs.parse_submit("", stderr, 1, req)
    assert err.value.message == sentence
    assert err.value.raw == stderr


def test_limit_error_with_the_queue_known_is_precise() -> None:
    stderr = text_of("errors", "torque_qsub_exceeds_max_walltime.stderr.txt")
    assert pbs.is_limit_error(stderr)
    req = JobRequest(script="true", partition="qexp", walltime=timedelta(hours=2))
    assert pbs.parse_submit_error(stderr, req, QEXP) == (
        "Queue 'qexp' allows at most 1 hour; you asked for 2 hours.")
    many = JobRequest(script="true", partition="qexp", cpus=200)
    assert pbs.parse_submit_error(stderr, many, QEXP) == (
        "Queue 'qexp' allows at most 144 cores; you asked for 200.")


def test_route_queue_minimum_nodes_is_named() -> None:
    stderr = text_of("errors", "pbspro2022_alcf_qsub_rejected_by_all_destinations.DOCTEXT.txt")
    req = JobRequest(script="true", partition="prod", walltime=timedelta(hours=1))
    assert pbs.parse_submit_error(stderr, req, POLARIS_QUEUES["prod"]) == (
        "Queue 'prod' takes only jobs of at least 10 nodes; notebook jobs use 1.")
    short = JobRequest(script="true", partition="debug", walltime=timedelta(minutes=1))
    assert pbs.parse_submit_error(stderr, short, POLARIS_QUEUES["debug"]) == (
        "Queue 'debug' takes jobs of at least 5 minutes; you asked for 1 minute.")


@pytest.mark.parametrize("name", [
    "pbspro2025_qsub_cannot_connect_errno15031_exit183.LOGLINE_stderr.txt",
    "pbspro2025_qsub_premature_end_of_message_exit183.stderr.txt",
    "torque_qsub_trqauthd_errno15137.stderr.txt",
])
def test_an_unreachable_server_is_not_a_refusal(name: str) -> None:
    stderr = text_of("errors", name)
    with pytest.raises(SchedulerUnavailable) as err:
        pbs.parse_submit("", stderr, 183)
    assert err.value.message.startswith("The PBS server is not answering: ")


# -- qdel ---------------------------------------------------------------------------------------------------


def test_build_cancel() -> None:
    assert pbs.build_cancel(["157.pbs", "40.pbs"]) == ["qdel", "157.pbs", "40.pbs"]
    with pytest.raises(UnsafeValue):
        pbs.build_cancel(["157.pbs -W force"])


def qdel_lines(name: str) -> list[str]:
    return [ln for ln in text_of("errors", name).splitlines() if ln.startswith("qdel:")]


@pytest.mark.parametrize("line", [
    *qdel_lines("pbs_sirna_qdel_qsub_errors.console_EXCERPTS.txt")[:2],
    *qdel_lines("openpbs_qtoolkit_code_comment_examples.txt"),
    *qdel_lines("pbspro_usyd_training_qsub_then_qdel_finished.console.txt"),
    text_of("errors", "torque_gc3pie_MOCK_qdel_notfound.stderr.txt"),  # no newline, as captured
])
def test_qdel_of_an_ended_job_is_harmless(line: str) -> None:
    assert pbs.cancel_error_is_harmless(line)
    pbs.parse_cancel("", line, 35)  # no exception


def test_harmless_lines_are_the_ones_read_from_the_samples() -> None:
    assert qdel_lines("pbs_sirna_qdel_qsub_errors.console_EXCERPTS.txt")[:2] == [
        "qdel: Job has finished", "qdel: Unknown Job Id 9999.sirna1"]
    assert qdel_lines("openpbs_qtoolkit_code_comment_examples.txt") == [
        "qdel: Unknown Job Id 100", "qdel: Job has finished 1004"]


@pytest.mark.parametrize(("stderr", "error"), [
    (qdel_lines("pbs_sirna_qdel_qsub_errors.console_EXCERPTS.txt")[2], CancelError),
    (text_of("errors", "torque_gc3pie_MOCK_qdel_failed_acl.stderr.txt"), CancelError),
    ("qdel: Unknown Job Id 9999.sirna1\nqdel: illegally formed job identifier: 0.sirna2\n", CancelError),
    (text_of("errors", "pbspro2022.1.7_qstat_connection_refused_errno15010.stderr.txt")
     .replace("qstat", "qdel"), SchedulerUnavailable),
])
def test_other_qdel_errors_are_errors(stderr: str, error: type[Exception]) -> None:
    assert not pbs.cancel_error_is_harmless(stderr)
    with pytest.raises(error):
        pbs.parse_cancel("", stderr, 15)


def test_cancel_error_in_words() -> None:
    stderr = text_of("errors", "torque_gc3pie_MOCK_qdel_failed_acl.stderr.txt")
    with pytest.raises(CancelError) as err:
        pbs.parse_cancel("", stderr, 159)
    assert err.value.message == ("PBS could not cancel the job: qdel: Unauthorized Request  "
                                 "MSG=operation not permitted 123")
