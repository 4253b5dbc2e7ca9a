"""PbsScheduler with a fake runner that answers with the real captured output (there is no PBS
server here), its configuration, and the policy checks against PBS queues."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path

import pytest

from gateway.admin.check import ConfigChecker, Report
from gateway.policy.live import compare_queue_limits
from gateway.policy.load import load_policy_text
from schedulers import pbs
from schedulers.errors import CancelError, SchedulerUnavailable, SubmitError
from schedulers.model import JobRequest, JobState
from schedulers.pbs_backend import PbsScheduler, resolve_host
from schedulers.registry import SchedulerSettings, make_scheduler
from schedulers.runners import CommandResult
from tests.helpers.paths import SHARED

PBS = SHARED / "fixtures" / "pbs"
ROOT = Path(__file__).resolve().parents[2]
PBS_SITE = (ROOT / "site_configs" / "pbs-site.yaml").read_text()
POLARIS = "pbspro2022_polaris_qstat_f_json_multi_3jobs_Q_H_R_ABRIDGED.json"
AURORA = "pbspro2022_aurora_qstat_xf_json_multi_8jobs_Q_H_F.json"
POLARIS_SERVER = ".polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov"
Q, H, R = (n + POLARIS_SERVER for n in ("359322", "412020", "1147579"))


def text_of(*parts: str) -> str:
    return PBS.joinpath(*parts).read_text()


Answer = CommandResult | Callable[[list[str]], CommandResult]


class FakeRunner:
    """Answers each command by its name (argv[0]) from a table; records every call."""

    def __init__(self, answers: dict[str, Answer]):
        self.answers = answers
        self.calls: list[tuple[list[str], str | None, str | None]] = []

    timeout = 30.0

    async def run(self, argv: Sequence[str], *, user: str | None = None, input: str | None = None,
                  timeout: float | None = None) -> CommandResult:
        argv = list(argv)
        self.calls.append((argv, user, input))
        answer = self.answers[argv[0]]
        return answer(argv) if callable(answer) else answer

    async def close(self) -> None:
        return None


class FakeResolver:
    def __init__(self, table: dict[str, str]):
        self.table = table
        self.asked: list[str] = []
        self.threads: set[str] = set()

    def __call__(self, name: str) -> str | None:
        self.asked.append(name)
        self.threads.add(threading.current_thread().name)
        return self.table.get(name)


def ok(stdout: str, stderr: str = "", rc: int = 0) -> CommandResult:
    return CommandResult(rc, stdout, stderr)


# -- submit -------------------------------------------------------------------------------------------------


async def test_submit_as_the_user_with_the_script_on_stdin() -> None:
    line = text_of("qsub", "pbspro_metacentrum_qsub_batch_success.console_ANNOTATED.txt").splitlines()[1]
    runner = FakeRunner({"qsub": ok(line.split(" # ")[0] + "\n")})
    scheduler = PbsScheduler(runner)
    req = JobRequest(script="echo hi\n", partition="debug", walltime=timedelta(minutes=30))
    assert await scheduler.submit(req, "alice") == "11733571.meta-pbs.metacentrum.cz"
    ((argv, user, script),) = runner.calls
    assert (argv, user) == (["qsub"], "alice")
    assert script == pbs.build_qsub(req)[1]
    assert "#PBS -q debug\n" in script and "#PBS -l walltime=00:30:00\n" in script


async def test_refused_submit_reads_the_queue_limits_for_a_precise_sentence() -> None:
    runner = FakeRunner({
        "qsub": ok("", text_of("errors", "torque_qsub_exceeds_max_walltime.stderr.txt"), 188),
        "qstat": ok(text_of("pbspro20_it4i_barbora_qstat_Qf_json_queue_qexp.json")),
    })
    scheduler = PbsScheduler(runner)
    req = JobRequest(script="true", partition="qexp", walltime=timedelta(hours=2))
    with pytest.raises(SubmitError) as err:
        await scheduler.submit(req, "alice")
    assert err.value.message == "Queue 'qexp' allows at most 1 hour; you asked for 2 hours."
    assert runner.calls[1][:2] == (["qstat", "-Q", "-f", "-F", "json"], None)
    with pytest.raises(SubmitError):  # the queue limits are cached: no second qstat
        await scheduler.submit(req, "alice")
    assert [c[0][0] for c in runner.calls] == ["qsub", "qstat", "qsub"]


async def test_refused_submit_without_readable_limits_still_has_words() -> None:
    runner = FakeRunner({
        "qsub": ok("", text_of("errors", "torque_qsub_exceeds_max_walltime.stderr.txt"), 188),
        "qstat": ok(text_of("pbspro22_bawspec_qstat_F_json_connection_refused.stdout.json"),
                    text_of("pbspro22_bawspec_qstat_F_json_connection_refused.stderr.txt"), 255),
    })
    with pytest.raises(SubmitError) as err:
        await PbsScheduler(runner).submit(JobRequest(script="true", partition="qexp"), "alice")
    assert err.value.message == "The walltime you asked for is more than queue 'qexp' allows."


async def test_submit_while_the_server_is_away() -> None:
    runner = FakeRunner({"qsub": ok("", text_of(
        "errors", "pbspro2025_qsub_premature_end_of_message_exit183.stderr.txt"), 183)})
    with pytest.raises(SchedulerUnavailable):
        await PbsScheduler(runner).submit(JobRequest(script="true"), "alice")


# -- status -------------------------------------------------------------------------------------------------


async def test_status_is_one_batched_qstat_with_node_addresses_cached() -> None:
    runner = FakeRunner({"qstat": ok(text_of(POLARIS))})
    resolver = FakeResolver({"x3006c0s31b1n0": "10.1.2.3"})
    scheduler = PbsScheduler(runner, resolve=resolver)
    jobs = await scheduler.status([Q, H, R])
    assert runner.calls == [(["qstat", "-x", "-f", "-F", "json", Q, H, R], None, None)]
    assert {k: v.state for k, v in jobs.items()} == {
        Q: JobState.PENDING, H: JobState.HELD, R: JobState.RUNNING}
    assert (jobs[R].node, jobs[R].node_address) == ("x3006c0s31b1n0", "10.1.2.3")
    await scheduler.status([Q, H, R])
    assert resolver.asked == ["x3006c0s31b1n0"]  # resolved once, then cached
    assert "MainThread" not in resolver.threads  # off the event loop
    assert await scheduler.node_addresses() == {"x3006c0s31b1n0": "10.1.2.3"}


async def test_status_keys_are_the_tracked_ids() -> None:
    runner = FakeRunner({"qstat": ok(text_of("pbspro19_metacentrum_qstat_xf_json_running_2nodes.json"))})
    jobs = await PbsScheduler(runner, resolve=FakeResolver({})).status(["12860476.meta-pbs"])
    assert list(jobs) == ["12860476.meta-pbs"] and jobs["12860476.meta-pbs"].node == "charon24"
    assert await PbsScheduler(runner).status([]) == {}
    assert len(runner.calls) == 1  # no ids, no qstat (it would list the whole history)


async def test_unknown_job_among_others_is_absent_not_an_error() -> None:
    aurora = text_of(AURORA)
    ids = list(json.loads(aurora)["Jobs"])
    gone = "10000.c2cf5fbe1102"
    stderr = text_of("errors", "openpbs_qtoolkit_code_comment_examples.txt").splitlines()[2] + "\n"
    assert stderr == f"qstat: Unknown Job Id {gone}\n"
    runner = FakeRunner({"qstat": ok(aurora, stderr, 153)})
    jobs = await PbsScheduler(runner, resolve=FakeResolver({})).status([*ids, gone])
    assert set(jobs) == set(ids)
    assert len(runner.calls) == 1  # the unknown job was answered for: no second look


async def test_jobs_left_out_silently_are_asked_for_one_by_one() -> None:
    # OpenPBS issue #2672: with several ids some builds print only the first job.
    full, _ = pbs.load_document(text_of(POLARIS))
    assert full is not None

    def qstat(argv: list[str]) -> CommandResult:
        first = argv[5]
        doc = {**full, "Jobs": {first: full["Jobs"][first]}}
        return ok(json.dumps(doc, indent=4, separators=(",", ":")))

    runner = FakeRunner({"qstat": qstat})
    jobs = await PbsScheduler(runner, resolve=FakeResolver({})).status([Q, R])
    assert {k: v.state for k, v in jobs.items()} == {Q: JobState.PENDING, R: JobState.RUNNING}
    assert [c[0][5:] for c in runner.calls] == [[Q, R], [R]]


async def test_unreachable_server_makes_status_unavailable() -> None:
    runner = FakeRunner({"qstat": ok(text_of("pbspro2025_bawspec_qstat_F_json_no_route_to_host.stdout.json"),
                                     text_of("pbspro2025_bawspec_qstat_F_json_no_route_to_host.stderr.txt"),
                                     255)})
    with pytest.raises(SchedulerUnavailable, match="cannot connect to server aqua"):
        await PbsScheduler(runner).status(["1.aqua"])


async def test_final_status_comes_from_the_same_history_query() -> None:
    runner = FakeRunner({"qstat": ok(text_of(
        "pbspro19_qstat_xf_json_finished_F_reserialized_by_buildtest.json"))})
    jobs = await PbsScheduler(runner, resolve=FakeResolver({"pbs": "10.0.0.9"})).final_status(["40.pbs"])
    assert (jobs["40.pbs"].state, jobs["40.pbs"].exit_code) == (JobState.COMPLETED, 0)
    assert runner.calls[0][0][:2] == ["qstat", "-x"]


# -- cancel -------------------------------------------------------------------------------------------------


async def test_cancel_as_the_user_tolerates_a_finished_job() -> None:
    finished = text_of("errors", "pbspro_usyd_training_qsub_then_qdel_finished.console.txt").splitlines()[-1]
    runner = FakeRunner({"qdel": ok("", finished + "\n", 35)})
    await PbsScheduler(runner).cancel(["463292.pbstraining"], user="alice")
    assert runner.calls == [(["qdel", "463292.pbstraining"], "alice", None)]
    await PbsScheduler(runner).cancel([])
    assert len(runner.calls) == 1


async def test_cancel_errors() -> None:
    denied = text_of("errors", "torque_gc3pie_MOCK_qdel_failed_acl.stderr.txt")
    acl = FakeRunner({"qdel": ok("", denied, 159)})
    with pytest.raises(CancelError):
        await PbsScheduler(acl).cancel(["123"], user="bob")
    away = FakeRunner({"qdel": ok("", "Connection refused\nqdel: cannot connect to server aqua "
                                      "(errno=15010)\n", 255)})
    with pytest.raises(SchedulerUnavailable):
        await PbsScheduler(away).cancel(["123"], user="bob")


# -- node addresses -----------------------------------------------------------------------------------------


async def test_node_address_misses_are_cached_briefly_and_hits_kept() -> None:
    resolver = FakeResolver({"c1": "10.0.0.1"})
    scheduler = PbsScheduler(FakeRunner({}), resolve=resolver, miss_cache_seconds=0)
    assert await scheduler.node_address("c1") == "10.0.0.1"
    assert await scheduler.node_address("nowhere") is None
    assert await scheduler.node_address("nowhere") is None
    assert resolver.asked == ["c1", "nowhere", "nowhere"]  # a miss is asked again after its TTL
    scheduler.node_cache_seconds = 0
    resolver.table.clear()  # a resolver hiccup must not lose a known node
    assert await scheduler.node_address("c1") == "10.0.0.1"


async def test_a_hanging_resolver_holds_one_thread_per_node() -> None:
    import threading

    release = threading.Event()
    asked: list[str] = []

    def hanging(node: str) -> str | None:
        asked.append(node)
        release.wait(5)
        return "10.0.0.9"

    scheduler = PbsScheduler(FakeRunner({}), resolve=hanging, resolve_timeout=0.05,
                             miss_cache_seconds=0)
    try:
        results = await asyncio.gather(*(scheduler.node_address("c9") for _ in range(4)))
        assert results == [None] * 4
        assert await scheduler.node_address("c9") is None  # the first lookup still runs
        assert asked == ["c9"]
    finally:
        release.set()
    await asyncio.sleep(0.1)  # the lookup ends: its late answer is kept
    assert await scheduler.node_address("c9") == "10.0.0.9"
    assert asked == ["c9"]


def test_default_resolver() -> None:
    assert resolve_host("localhost") in ("127.0.0.1", "::1")
    assert resolve_host("no-such-host.invalid") is None


# -- configuration ------------------------------------------------------------------------------------------


def test_the_registry_makes_a_pbs_scheduler_for_command_transports() -> None:
    for transport in ("sudo", "ssh", "local"):
        settings = SchedulerSettings(kind="pbs", transport=transport, ssh_host="login1",
                                     ssh_service_user="hpcgate")
        assert isinstance(make_scheduler(settings), PbsScheduler)
    with pytest.raises(ValueError, match="transport 'rest' does not work with pbs"):
        make_scheduler(SchedulerSettings(kind="pbs", transport="rest"))
    with pytest.raises(ValueError, match="use 'slurm' or 'pbs'"):
        make_scheduler(SchedulerSettings(kind="lsf"))


# -- the policy against PBS's queues ----------------------------------------------------------------------


def queues(name: str) -> dict[str, pbs.QueueLimits]:
    return pbs.parse_queues(text_of(name))


def test_policy_against_polaris_queues() -> None:
    problems = compare_queue_limits(load_policy_text(PBS_SITE),
                                    queues("pbspro2022_polaris_qstat_Qf_json_4queues_ABRIDGED.json"))
    # debug (1 hour, 1 node) fits Polaris's debug queue; workq does not exist there.
    assert [(p.field, p.message, p.severity) for p in problems] == [
        ("partitions.workq", "PBS has no queue 'workq' (it has: run_next, debug, prod, small).", "error")]


def test_policy_promising_more_than_the_queue() -> None:
    text = (PBS_SITE.replace("debug", "qexp").replace("max_walltime: 1h", "max_walltime: 2h")
            .replace("max_cpus: 32", "max_cpus: 200"))
    problems = [p for p in compare_queue_limits(load_policy_text(text),
                                                queues("pbspro20_it4i_barbora_qstat_Qf_json_queue_qexp.json"))
                if p.partition == "qexp"]
    assert [p.message for p in problems] == [
        "partitions.qexp.max_walltime promises 2 hours, but PBS allows at most 1 hour on queue 'qexp' "
        "(resources_max.walltime).",
        "partitions.qexp.max_cpus promises 200 cores, but PBS allows at most 144 cores on queue 'qexp' "
        "(resources_max.ncpus).",
    ]


def test_group_overrides_against_a_gpu_less_queue() -> None:
    text = PBS_SITE.replace("workq", "quick")
    problems = [p for p in compare_queue_limits(load_policy_text(text), queues(
        "pbspro2021_bawspec_qstat_Qf_json_queue_quick_POSSIBLY_EDITED.json")) if p.partition == "quick"]
    # 24 h and 4 GPUs promised; quick allows 4 h and 0 GPUs. The ecology group's own limits on
    # quick set 0 GPUs (fits) but inherit the 24 h; genomics has no limits of its own there.
    assert [p.field for p in problems] == [
        "partitions.quick.max_walltime", "partitions.quick.max_gpus",
        "groups.ecology.limits.quick.max_walltime"]
    assert problems[1].message == ("partitions.quick.max_gpus promises 4 GPUs, but PBS allows at most "
                                   "0 GPUs on queue 'quick' (resources_max.ngpus).")


def test_disabled_queue_and_route_minimum() -> None:
    text = PBS_SITE.replace("debug", "run_next").replace("workq", "small")
    problems = compare_queue_limits(load_policy_text(text), queues(
        "pbspro2022_polaris_qstat_Qf_json_4queues_ABRIDGED.json"))
    by_field = {p.field: p for p in problems}
    assert by_field["partitions.run_next"].severity == "warning"
    assert "is disabled" in by_field["partitions.run_next"].message
    minimum = by_field["partitions.small.max_nodes"]
    assert minimum.message == ("Queue 'small' takes only jobs of at least 10 nodes (resources_min.nodect), "
                               "but partitions.small allows at most 1: every job there would be refused.")


def test_default_walltime_below_a_queue_minimum() -> None:
    text = PBS_SITE.replace("default_walltime: 30m", "default_walltime: 2m")
    problems = compare_queue_limits(load_policy_text(text), queues(
        "pbspro2022_polaris_qstat_Qf_json_4queues_ABRIDGED.json"))
    assert [p.message for p in problems if p.partition == "debug"] == [
        "partitions.debug.default_walltime suggests 2 minutes, but queue 'debug' takes jobs of at least "
        "5 minutes (resources_min.walltime)."]


def check_pbs(runner: FakeRunner) -> Report:
    report = Report()
    checker = ConfigChecker(load_policy_text(PBS_SITE, "pbs-site.yaml"), "pbs-site.yaml", report,
                            runner=runner, test_user="root")
    asyncio.run(checker.check_scheduler())
    return report


def test_check_config_compares_the_policy_with_pbs_queues() -> None:
    runner = FakeRunner({"qstat": ok(text_of("pbspro2022_polaris_qstat_Qf_json_4queues_ABRIDGED.json"))})
    report = check_pbs(runner)
    # Through the adapter's queue_limits, as the test user.
    assert runner.calls == [(["qstat", "-Q", "-f", "-F", "json"], "root", None)]
    assert report.lines("ok") == ["PBS answers root: queues run_next, debug, prod, small."]
    assert report.failures == ["PBS has no queue 'workq' (it has: run_next, debug, prod, small)."]
    assert not any("not implemented" in line for line in report.lines())


def test_check_config_passes_when_the_queues_fit() -> None:
    # Polaris's queues plus the unlimited default `workq` of the PBS 19 sample.
    doc, _ = pbs.load_document(text_of("pbspro2022_polaris_qstat_Qf_json_4queues_ABRIDGED.json"))
    workq, _ = pbs.load_document(text_of("pbspro19_qstat_Qf_json_single_queue_workq.json"))
    doc["Queue"]["workq"] = workq["Queue"]["workq"]
    report = check_pbs(FakeRunner({"qstat": ok(json.dumps(doc, indent=4))}))
    assert report.failures == [] and report.lines("warn") == []
    assert report.lines("ok")[-1] == ("The policy's limits fit PBS's queues (debug resources_max.walltime "
                                      "1 hour, workq resources_max.walltime unlimited).")


def test_check_config_pbs_failures_are_sentences() -> None:
    stderr = text_of("errors", "pbspro2022.1.7_qstat_connection_refused_errno15010.stderr.txt")
    assert check_pbs(FakeRunner({"qstat": ok("", stderr, 255)})).failures == [
        "Asked as root: `qstat -Qf -F json` failed: qstat: cannot connect to server localhost "
        "(errno=15010)."]
    assert check_pbs(FakeRunner({"qstat": ok(text_of("torque7_qstat_Qf_text_queue.txt"))})).failures == [
        "Asked as root: qstat -Qf printed no JSON."]


async def test_list_jobs_is_every_current_job() -> None:
    runner = FakeRunner({"qstat": ok(text_of(POLARIS))})
    jobs = await PbsScheduler(runner).list_jobs()
    assert runner.calls[0][0] == pbs.build_list_current()  # no -x: no history
    assert {Q, H, R} <= set(jobs)
