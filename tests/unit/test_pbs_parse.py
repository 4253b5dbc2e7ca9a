"""PBS status and queue parsers against the real samples in ../shared/fixtures/pbs (see SOURCES.md).

Every value asserted here was read from the sample files. Where a case has no public capture
(a walltime kill, a string Exit_status, broken environment values, cJSON's TAB layout), the test
derives its input from a real sample and says how.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from schedulers import pbs
from schedulers.errors import SchedulerUnavailable
from schedulers.model import JobState, UnsafeValue
from tests.helpers.paths import SHARED

PBS = SHARED / "fixtures" / "pbs"
ERRORS = PBS / "errors"
AURORA = "pbspro2022_aurora_qstat_xf_json_multi_8jobs_Q_H_F.json"
POLARIS = "pbspro2022_polaris_qstat_f_json_multi_3jobs_Q_H_R_ABRIDGED.json"
FINISHED = "pbspro19_qstat_xf_json_finished_F_reserialized_by_buildtest.json"
HELD = "pbspro19_qstat_xf_json_held_userhold.json"
RUNNING = "pbspro19_metacentrum_qstat_xf_json_running_2nodes.json"
HEADER_REFUSED = "pbspro22_bawspec_qstat_F_json_connection_refused"
HEADER_NO_ROUTE = "pbspro2025_bawspec_qstat_F_json_no_route_to_host"
AURORA_SERVER = ".aurora-pbs-0001.hostmgmt.cm.aurora.alcf.anl.gov"
POLARIS_SERVER = ".polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov"


def sample(name: str) -> str:
    return (PBS / name).read_text()


def error_sample(name: str) -> str:
    return (ERRORS / name).read_text()


def one(text: str, stderr: str = "", returncode: int = 0) -> pbs.JobStatus:
    (status,) = pbs.parse_status(text, stderr, returncode).values()
    return status


def edited(name: str, **changes: object) -> str:
    """A single-job sample with fields changed (None removes one), re-serialized as PBS's layout."""
    doc = json.loads(sample(name))
    (job,) = doc["Jobs"].values()
    for key, value in changes.items():
        if value is None:
            job.pop(key, None)
        else:
            job[key] = value
    return json.dumps(doc, indent=4, separators=(",", ":"))


# -- job documents, state by state -----------------------------------------------------------------


def test_running_two_node_job_from_metacentrum() -> None:
    status = one(sample(RUNNING))
    assert status.job_id == "12860476.meta-pbs.metacentrum.cz"
    assert status.state is JobState.RUNNING
    assert status.node == "charon24"  # exec_host "charon24/0*2+charon21/0*2"
    assert status.reason.startswith("Job run at Tue Oct 04 at 21:23 on (charon24:ncpus=2")
    assert status.reason_text == "Running"
    assert (status.exit_code, status.signal, status.estimated_start) == (None, None, None)
    # The job's environment (with its unquoted numbers) never reaches logs through `raw`.
    assert "Variable_List" not in status.raw
    assert status.raw["Resource_List"]["select"] == "2:ncpus=2:mem=4gb:mpiprocs=2:ompthreads=1"


def test_user_hold() -> None:
    status = one(sample(HELD))
    assert (status.job_id, status.state) == ("157.pbs", JobState.HELD)
    assert status.reason == ""  # the sample has no comment
    assert status.reason_text == "Held by you: release the job (qrls) to let it start"
    assert not status.reason_is_permanent and status.node is None


def test_finished_job_reserialized_by_buildtest() -> None:
    status = one(sample(FINISHED))
    assert (status.job_id, status.state, status.exit_code) == ("40.pbs", JobState.COMPLETED, 0)
    assert status.node == "pbs"  # exec_host "pbs/0"
    assert status.reason == "Job run at Wed Mar 17 at 20:36 on (pbs:ncpus=1) and finished"
    assert status.reason_text == "The job finished."
    assert status.is_final


def test_composite_openpbs_sample_field_names() -> None:
    status = one(sample("openpbs22_bawspec_qstat_xf_json_finished_F_COMPOSITE_EDITED.json"))
    assert (status.job_id, status.state, status.exit_code) == ("0.725ccdf1a5fb", JobState.COMPLETED, 0)
    assert status.node == "725ccdf1a5fb"
    assert status.estimated_start is None  # an estimate on a finished job means nothing


def test_abridged_psij_sample_with_a_trailing_comma_is_repaired() -> None:
    text = sample("pbspro2022_alcf_edtb_qstat_xf_json_F_ABRIDGED_psij_doc.json")
    with pytest.raises(ValueError):
        json.loads(text)  # the sample really is invalid JSON
    status = one(text)
    assert (status.job_id, status.state, status.exit_code) == (
        "2154.edtb-01.mcp.alcf.anl.gov", JobState.COMPLETED, 0)
    assert status.reason == "Job run at Mon Jan 24 at 08:39 on (edtb-01[0]:ncpus=1) and finished"


def test_aurora_eight_jobs_held_queued_and_deleted_before_running() -> None:
    jobs = pbs.parse_status(sample(AURORA))
    expected = {
        "4345644": JobState.HELD, "4349862": JobState.HELD, "4683812": JobState.PENDING,
        "4846771": JobState.CANCELLED, "4846773": JobState.CANCELLED, "4905429": JobState.HELD,
        "4905459": JobState.HELD, "4905472": JobState.HELD,
    }
    assert {k.removesuffix(AURORA_SERVER): v.state for k, v in jobs.items()} == expected
    retried = jobs["4345644" + AURORA_SERVER]
    assert retried.reason == "job held, too many failed attempts to run"
    assert retried.reason_text == ("Held: PBS could not start the job after several attempts; an "
                                   "administrator must release it (or you cancel it)")
    assert retried.estimated_start is None  # PBS kept an April estimate on a job held since
    queued = jobs["4683812" + AURORA_SERVER]
    assert queued.reason == "Not Running: Insufficient amount of resource: at_queue"  # stripped
    assert queued.reason_text == "Queued: waiting for free 'at_queue' (a site resource)"
    assert not queued.reason_is_permanent
    deleted = jobs["4846771" + AURORA_SERVER]  # F, substate 91, no Exit_status
    assert deleted.reason == "Not Running: Not enough free nodes available and terminated"
    assert deleted.reason_text == "The job was deleted before it started."
    assert (deleted.exit_code, deleted.node) == (None, None)
    held_by = jobs["4905429" + AURORA_SERVER]
    assert held_by.reason == "Job held by mmin on Wed May 21 19:15:19 2025"
    assert held_by.reason_text == "Held by mmin: it starts only after a release (qrls)"


def test_polaris_queued_held_and_running_with_an_invalid_trailing_comma() -> None:
    text = sample(POLARIS)
    with pytest.raises(ValueError):
        json.loads(text)
    jobs = pbs.parse_status(text)
    queued, held, running = (jobs[n + POLARIS_SERVER] for n in ("359322", "412020", "1147579"))
    assert queued.state is JobState.PENDING
    assert queued.reason_text == "Queued: waiting for a whole node to become free"
    assert held.state is JobState.HELD and held.exit_code is None  # Exit_status -3 on a held job
    assert held.raw["Exit_status"] == -3 and held.raw["run_count"] == 21
    assert running.state is JobState.RUNNING
    assert running.node == "x3006c0s31b1n0"  # first of 160 hosts
    assert running.estimated_start is None  # only queued jobs carry an estimate


def test_estimated_start_of_a_queued_job() -> None:
    # Aurora's job 4345644 carries estimated.start_time "Mon Apr 21 15:36:38 2025"; as a Q job:
    doc = json.loads(sample(AURORA))
    doc["Jobs"]["4345644" + AURORA_SERVER]["job_state"] = "Q"
    status = pbs.parse_status(json.dumps(doc))["4345644" + AURORA_SERVER]
    assert status.state is JobState.PENDING
    assert status.estimated_start == datetime(2025, 4, 21, 15, 36, 38)


@pytest.mark.parametrize(("letter", "state"), [
    ("Q", JobState.PENDING), ("W", JobState.PENDING), ("T", JobState.PENDING),
    ("H", JobState.HELD), ("R", JobState.RUNNING), ("E", JobState.RUNNING), ("B", JobState.RUNNING),
    ("S", JobState.SUSPENDED), ("U", JobState.SUSPENDED), ("F", JobState.COMPLETED),
    ("X", JobState.COMPLETED), ("M", JobState.UNKNOWN), ("0", JobState.UNKNOWN), ("Z", JobState.UNKNOWN),
])
def test_every_state_letter(letter: str, state: JobState) -> None:
    status = one(edited(FINISHED, job_state=letter))  # Exit_status 0 decides F and X
    assert status.state is state
    assert status.reason_text  # every state has words, unknown letters too


def test_unknown_letter_and_moved_job_say_so() -> None:
    assert one(edited(FINISHED, job_state="0")).reason_text == (
        "PBS reports a state this gateway does not know: '0'")
    assert "moved to another PBS server" in one(edited(FINISHED, job_state="M")).reason_text


# -- exit statuses (derived from the finished sample: Exit_status and substate changed) -----------


@pytest.mark.parametrize(("exit_status", "substate", "state", "exit_code", "sig", "words"), [
    (0, 92, JobState.COMPLETED, 0, None, "The job finished."),
    (3, 93, JobState.FAILED, 3, None, "The job failed with exit code 3."),
    (255, 93, JobState.FAILED, 255, None, "The job failed with exit code 255."),
    (271, 93, JobState.FAILED, None, 15, "The job was killed by signal 15 (SIGTERM)."),
    (265, 93, JobState.FAILED, None, 9, "The job was killed by signal 9 (SIGKILL)."),
    (271, 91, JobState.CANCELLED, None, 15, "The job was deleted while it ran."),
    (-29, 93, JobState.TIMEOUT, None, None, "The job reached its walltime and was stopped."),
    ("-29", 93, JobState.TIMEOUT, None, None, "The job reached its walltime and was stopped."),
    ("0", 92, JobState.COMPLETED, 0, None, "The job finished."),
    (-27, 93, JobState.FAILED, None, None,
     "The job used more memory than it asked for and was killed (PBS code -27)."),
    (-17, 93, JobState.FAILED, None, None,
     "A site hook failed while starting the job and deleted it (PBS code -17)."),
    (-99, 93, JobState.FAILED, None, None, "PBS could not run the job (PBS code -99)."),
    (None, 91, JobState.CANCELLED, None, None, "The job was deleted before it started."),
    (None, 92, JobState.FAILED, None, None, "The job ended, but PBS kept no exit status for it."),
])
def test_exit_status(exit_status: object, substate: int, state: JobState, exit_code: int | None,
                     sig: int | None, words: str) -> None:
    status = one(edited(FINISHED, Exit_status=exit_status, substate=substate))
    assert (status.state, status.exit_code, status.signal, status.reason_text) == (
        state, exit_code, sig, words)
    assert status.is_final


# -- comments: plain words, and what can never clear --------------------------------------------------


@pytest.mark.parametrize(("comment", "state", "words", "permanent"), [
    ("Not Running: Job is requesting an exclusive node and node is in use", JobState.PENDING,
     "Queued: waiting for a whole node to become free", False),
    ("Not Running: Insufficient amount of resource: ncpus (R: 64 A: 0 T: 560)", JobState.PENDING,
     "Queued: waiting for free cores", False),
    ("Not Running: would exceed queue generic's per-user limit", JobState.PENDING,
     "Queued: a per-user limit is reached; it starts when other jobs end", False),
    ("Can Never Run: Insufficient amount of queue resource: ncpus (R: 300 A: 144 T: 144)",
     JobState.PENDING,
     "The job can never start: Insufficient amount of queue resource: ncpus (R: 300 A: 144 T: 144)",
     True),
    ("Job violates queue and/or server resource limits", JobState.PENDING,
     "The job can never start: Job violates queue and/or server resource limits", True),
    ("Not Running: Something new", JobState.PENDING, "Queued: Something new", False),
    ("", JobState.PENDING, "Queued: waiting for the scheduler's next pass", False),
])
def test_comment_words(comment: str, state: JobState, words: str, permanent: bool) -> None:
    assert pbs.explain_comment(comment, state) == (words, permanent)


def test_hold_types_without_a_comment() -> None:
    assert pbs.explain_comment("", JobState.HELD, "s") == ("Held by the system", False)
    assert pbs.explain_comment("", JobState.HELD, "o") == ("Held by an operator", False)


def test_permanent_comment_reaches_the_status() -> None:
    status = one(edited(HELD, job_state="Q", comment="Can Never Run: Job would exceed queue limits"))
    assert status.reason_is_permanent and status.state is JobState.PENDING


# -- broken JSON that real PBS prints ------------------------------------------------------------------


def test_unquoted_leading_zero_number_in_the_environment() -> None:
    # openpbs issue #1255 (qsub/openpbs_nasa_...): `qsub -v foo=005` made qstat print "foo":005.
    console = (PBS / "qsub" / "openpbs_nasa_qsub_success_and_json_numeric_env_bug.console.txt").read_text()
    bad_line = next(ln for ln in console.splitlines() if '"foo":005' in ln)
    text = sample(RUNNING).replace('"PBS_O_HOME"', bad_line.strip() + '\n                "PBS_O_HOME"', 1)
    with pytest.raises(ValueError):
        json.loads(text)
    assert one(text).state is JobState.RUNNING


def test_unescaped_quotes_backslashes_and_newlines_in_environment_values() -> None:
    # openpbs #2541 / PR #2049: BASH_FUNC_* and other values printed without escaping.
    broken = ('                "BASH_FUNC_module()":"() {  eval `/usr/bin/modulecmd bash $*`\n'
              '}",\n'
              '                "GREETING":"say "hi" to C:\\path",\n')
    text = sample(RUNNING).replace('                "PBS_O_HOME"', broken + '                "PBS_O_HOME"', 1)
    with pytest.raises(ValueError):
        json.loads(text)
    status = one(text)
    assert (status.state, status.node) == (JobState.RUNNING, "charon24")


def test_unescaped_quote_outside_the_environment_is_repaired_too() -> None:
    text = sample(FINISHED).replace('"Submit_arguments": "-q workq',
                                    '"Submit_arguments": "-v X="a b" -q workq')
    with pytest.raises(ValueError):
        json.loads(text)
    status = one(text)
    assert status.raw["Submit_arguments"].startswith('-v X="a b" -q workq')


def test_variable_list_drop_keeps_the_following_members() -> None:
    # The environment block ends at a "}," with the same indent as its opening line.
    text = pbs._drop_variable_lists(sample(RUNNING))
    doc = json.loads(text)
    job = doc["Jobs"]["12860476.meta-pbs.metacentrum.cz"]
    assert job["Variable_List"] == {} and job["Submit_arguments"] == "job.sh"


def tab_layout(text: str) -> str:
    """cJSON's layout (OpenPBS master): TAB indentation and a TAB after each colon."""
    out = []
    for line in text.splitlines():
        body = line.lstrip(" ")
        depth = (len(line) - len(body)) // 4
        out.append("\t" * depth + re.sub(r'^("[^"]*"):', "\\1:\t", body))
    return "\n".join(out) + "\n"


def test_cjson_tab_layout_from_the_openpbs_23_capture() -> None:
    # The real capture: a text table, then a TAB-formatted header without "Jobs" (exit 0).
    text = sample("openpbs23_cjson_qstat_u_fF_JSON_mixed_text_and_json_BUG.stdout.txt")
    assert '"timestamp":\t1749572608' in text
    assert pbs.parse_status(text) == {}
    doc, rest = pbs.load_document(text)
    assert doc == {"timestamp": 1749572608, "pbs_version": "23.06.06", "pbs_server": "VMa"}
    assert rest == ""


def test_tab_layout_of_real_job_documents_parses_the_same() -> None:
    for name in (AURORA, POLARIS, RUNNING):
        spaced = pbs.parse_status(sample(name))
        tabbed = pbs.parse_status(tab_layout(sample(name)))
        assert {k: (v.state, v.node, v.reason) for k, v in tabbed.items()} == {
            k: (v.state, v.node, v.reason) for k, v in spaced.items()}
    tabbed_polaris = tab_layout(sample(POLARIS))
    assert '\t\t\t"job_state":\t"R",' in tabbed_polaris and "\t\t},\n\t}" in tabbed_polaris


# -- errors: header-only JSON, unknown jobs, unreachable servers -----------------------------------


@pytest.mark.parametrize("name", [HEADER_REFUSED, HEADER_NO_ROUTE])
def test_header_only_with_an_error_is_unavailable(name: str) -> None:
    stdout, stderr = sample(f"{name}.stdout.json"), sample(f"{name}.stderr.txt")
    with pytest.raises(SchedulerUnavailable) as err:
        pbs.parse_status(stdout, stderr, 255)  # exit 255 as the source states
    server = "6cfab3a0b8ac" if name == HEADER_REFUSED else "aqua"
    assert f"qstat: cannot connect to server {server} (errno=15010)" in err.value.message
    assert err.value.raw == stderr


def test_header_only_without_error_means_no_jobs() -> None:
    assert pbs.parse_status(sample(f"{HEADER_REFUSED}.stdout.json"), "", 0) == {}


def test_header_only_with_exit_255_and_no_stderr_is_unavailable() -> None:
    with pytest.raises(SchedulerUnavailable, match="exit status 255"):
        pbs.parse_status(sample(f"{HEADER_NO_ROUTE}.stdout.json"), "", 255)


def test_logged_line_with_stdout_and_stderr_merged() -> None:
    text = error_sample("pbspro2025.2_qstat_F_json_connection_refused_exit255.LOGLINE_stdout+stderr.txt")
    with pytest.raises(SchedulerUnavailable) as err:
        pbs.parse_status(text, "", 255)
    assert "Connection refused qstat: cannot connect to server aqua (errno=15010)" in err.value.message


def test_premature_end_of_message_exit_183() -> None:
    stdout = error_sample("pbspro2026.0_qstat_F_json_premature_end_of_message_exit183.LOGLINE_stdout.txt")
    stderr = error_sample("pbspro2026.0_qstat_F_json_premature_end_of_message_exit183.stderr.txt")
    with pytest.raises(SchedulerUnavailable) as err:
        pbs.parse_status(stdout, stderr, 183)
    assert err.value.message == ("The PBS server is not answering: qstat: Premature end of message "
                                 "15458627.aqua")


@pytest.mark.parametrize("name", [
    "pbspro2022.1.7_qstat_connection_refused_errno15010.stderr.txt",
    "pbspro2022.1.7_qstat_connection_timed_out_errno15010.stderr.txt",
    "pbspro2022.1.7_qstat_unknown_host_errno15008.stderr.txt",
    "pbspro18.2.6_qstat_connection_refused_errno111.stderr.txt",
    "openpbs_dev2021_qstat_connection_refused_errno111.stderr.txt",
    "openpbs_qstat_B_connection_refused_errno111.stderr.txt",
])
def test_every_unreachable_server_message_is_unavailable(name: str) -> None:
    stderr = error_sample(name)
    last = stderr.strip().splitlines()[-1]
    with pytest.raises(SchedulerUnavailable) as err:
        pbs.parse_status(sample(f"{HEADER_REFUSED}.stdout.json"), stderr, 255)
    assert last in err.value.message
    with pytest.raises(SchedulerUnavailable):  # and with nothing at all on stdout
        pbs.parse_status("", stderr, 255)


def qstat_lines(name: str) -> str:
    return "\n".join(ln for ln in error_sample(name).splitlines()
                     if ln.startswith("qstat:") or ln.startswith("  ")) + "\n"


def test_unknown_job_ids_do_not_fail_the_jobs_that_were_printed() -> None:
    # With several ids, qstat exits 153 for the unknown one and prints the others (SOURCES §9.5).
    stderr = qstat_lines("openpbs_qtoolkit_code_comment_examples.txt")
    assert stderr.startswith("qstat: Unknown Job Id 10000.c2cf5fbe1102\nqstat: 1008.c2cf5fbe1102 Job has")
    jobs = pbs.parse_status(sample(AURORA), stderr, 153)
    assert len(jobs) == 8
    assert pbs.gone_job_ids(stderr) == {"10000.c2cf5fbe1102", "1008.c2cf5fbe1102"}


@pytest.mark.parametrize(("name", "returncode", "gone"), [
    ("torque_gc3pie_MOCK_qstat_notfound.stderr.txt", 153, {"123"}),
    ("torque_bpipe_code_comment_unknown_job_id_error.txt", 153,
     {"3685292.mgt.meerkat.mcri.edu.au", "12345.mgt.meerkat.mcri.edu.au"}),
    ("pbspro_palmetto_qstat_job_has_finished_use_x.console.txt", 35, {"4256957.pbs02"}),
])
def test_a_header_and_only_unknown_or_finished_jobs_is_an_answer(name: str, returncode: int,
                                                                  gone: set[str]) -> None:
    # Every asked job is unknown: that is PBS's answer (the watcher's grace period decides),
    # not a failed query that would keep the jobs UNKNOWN for ever.
    stderr = qstat_lines(name)
    assert pbs.parse_status(sample(f"{HEADER_REFUSED}.stdout.json"), stderr, returncode) == {}
    assert pbs.gone_job_ids(stderr) == gone


def test_unknown_job_next_to_a_real_error_is_still_a_failure() -> None:
    stderr = ("qstat: Unknown Job Id 123\n"
              + error_sample("pbspro2026.0_qstat_F_json_premature_end_of_message_exit183.stderr.txt"))
    with pytest.raises(SchedulerUnavailable, match="Premature end of message"):
        pbs.parse_status(sample(AURORA), stderr, 183)


def test_unreadable_json_is_unavailable_not_empty() -> None:
    with pytest.raises(SchedulerUnavailable, match="could not be read"):
        pbs.parse_status(sample(AURORA)[:5000])  # cut off mid-document


@pytest.mark.parametrize("name", [
    "torque_qstat_x_xml_queued_Q_denbi.xml", "torque_qstat_x_xml_completed_C_exit0_denbi.xml",
    "torque_qstat_x_xml_held_H_PRETTYPRINTED.xml", "torque_qstat_x_xml_multi_6jobs_R_Q_C_array_fyrd.xml",
    "torque_osc_qstat_x_xml_queued_Q.xml",
])
def test_torque_xml_is_refused_in_words(name: str) -> None:
    with pytest.raises(SchedulerUnavailable, match="Torque"):
        pbs.parse_status(sample(name))


@pytest.mark.parametrize("name", [
    "pbspro_text_qstat_f_multi_6jobs_aiida.txt", "torque_text_qstat_f_multi_10jobs_anonymized_aiida.txt",
    "torque_qstat_f_completed_C_exit0.txt",
])
def test_text_qstat_f_is_refused_in_words(name: str) -> None:
    with pytest.raises(SchedulerUnavailable, match="-F json"):
        pbs.parse_status(sample(name))


def test_server_listings_hold_no_jobs_and_no_queues() -> None:
    for name in ("pbspro2022_polaris_qstat_Bf_json_server.json",
                 "pbspro2022_aurora_qstat_Bf_json_server_REFORMATTED.json"):
        assert pbs.parse_status(sample(name)) == {}
        assert pbs.parse_queues(sample(name)) == {}


# -- ids ------------------------------------------------------------------------------------------------


def test_tracked_ids_match_by_number_when_the_server_name_differs() -> None:
    parsed = pbs.parse_status(sample(RUNNING))
    matched = pbs.match_job_ids(parsed, ["12860476.meta-pbs", "999.meta-pbs"])
    assert list(matched) == ["12860476.meta-pbs"]
    assert matched["12860476.meta-pbs"].job_id == "12860476.meta-pbs"


def test_build_status_is_one_batched_call_and_never_all_history() -> None:
    assert pbs.build_status(["1.srv", "2.srv"]) == ["qstat", "-x", "-f", "-F", "json", "1.srv", "2.srv"]
    with pytest.raises(ValueError):
        pbs.build_status([])
    with pytest.raises(UnsafeValue):
        pbs.build_status(["1.srv; rm -rf /"])


# -- queues -----------------------------------------------------------------------------------------------


def test_queue_with_limits_and_defaults_it4i() -> None:
    (qexp,) = pbs.parse_queues(sample("pbspro20_it4i_barbora_qstat_Qf_json_queue_qexp.json")).values()
    assert (qexp.name, qexp.queue_type, qexp.enabled, qexp.started) == ("qexp", "Execution", True, True)
    assert qexp.max_walltime == timedelta(hours=1)
    assert (qexp.max_ncpus, qexp.max_nodect, qexp.max_mem_mb, qexp.max_ngpus) == (144, 4, None, None)
    assert (qexp.default_walltime, qexp.default_ncpus) == (timedelta(hours=1), 36)
    assert not qexp.is_route


def test_default_queue_without_limits() -> None:
    (workq,) = pbs.parse_queues(sample("pbspro19_qstat_Qf_json_single_queue_workq.json")).values()
    assert workq.name == "workq" and workq.enabled and workq.started
    assert (workq.max_walltime, workq.max_ncpus, workq.max_mem_mb, workq.max_ngpus) == (None,) * 4


def test_polaris_queues_abridged_with_a_route_queue() -> None:
    text = sample("pbspro2022_polaris_qstat_Qf_json_4queues_ABRIDGED.json")
    queues = pbs.parse_queues(text)
    assert list(queues) == ["run_next", "debug", "prod", "small"]
    assert (queues["run_next"].enabled, queues["run_next"].started) == (False, False)
    debug = queues["debug"]
    assert (debug.max_walltime, debug.max_nodect) == (timedelta(hours=1), 2)
    assert (debug.min_walltime, debug.min_nodect) == (timedelta(minutes=5), 1)
    prod = queues["prod"]
    assert prod.is_route and prod.max_walltime == timedelta(hours=24) and prod.max_nodect == 496
    assert prod.route_destinations == ("small", "medium", "large", "backfill-small", "backfill-medium",
                                       "backfill-large")
    assert queues["small"].min_nodect == 10


def test_queue_with_gpu_limit_zero() -> None:
    (quick,) = pbs.parse_queues(
        sample("pbspro2021_bawspec_qstat_Qf_json_queue_quick_POSSIBLY_EDITED.json")).values()
    assert (quick.max_ngpus, quick.max_walltime) == (0, timedelta(hours=4))


def test_torque_queue_text_is_refused() -> None:
    with pytest.raises(SchedulerUnavailable, match="qstat -Qf printed no JSON"):
        pbs.parse_queues(sample("torque7_qstat_Qf_text_queue.txt"))


@pytest.mark.parametrize(("text", "mb"), [
    ("8gb", 8192), ("4194304kb", 4096), ("512mb", 512), ("0kb", 0), ("40tb", 40 * 1024 * 1024),
    ("1073741824", 1024), ("128mw", 1024), ("4GB", 4096), (4294967296, 4096), ("lots", None),
])
def test_sizes(text: object, mb: int | None) -> None:
    assert pbs.parse_size_mb(text) == mb


def test_queue_walltimes_unset_or_unreadable_are_no_limit() -> None:
    """The readings themselves are in test_durations.py; a queue keeps its other limits either way."""
    queue = pbs.queue_from_record("q", {"resources_max": {"walltime": "240:00:00", "ncpus": 8},
                                        "resources_min": {"walltime": "soon"},
                                        "resources_default": {"walltime": 5400}})
    assert queue.max_walltime == timedelta(hours=240) and queue.max_ncpus == 8
    assert queue.min_walltime is None
    assert queue.default_walltime == timedelta(minutes=90)


def test_every_json_sample_in_the_folder_is_covered() -> None:
    """A new sample dropped into the folder must get a test here too."""
    covered = {AURORA, POLARIS, FINISHED, HELD, RUNNING,
               "openpbs22_bawspec_qstat_xf_json_finished_F_COMPOSITE_EDITED.json",
               "pbspro2022_alcf_edtb_qstat_xf_json_F_ABRIDGED_psij_doc.json",
               "pbspro20_it4i_barbora_qstat_Qf_json_queue_qexp.json",
               "pbspro19_qstat_Qf_json_single_queue_workq.json",
               "pbspro2022_polaris_qstat_Qf_json_4queues_ABRIDGED.json",
               "pbspro2021_bawspec_qstat_Qf_json_queue_quick_POSSIBLY_EDITED.json",
               "pbspro2022_polaris_qstat_Bf_json_server.json",
               "pbspro2022_aurora_qstat_Bf_json_server_REFORMATTED.json",
               f"{HEADER_REFUSED}.stdout.json", f"{HEADER_NO_ROUTE}.stdout.json"}
    present = {p.name for p in Path(PBS).glob("*.json")}
    assert present == covered
