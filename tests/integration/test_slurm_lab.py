"""The scheduler layer against the lab's real Slurm: CLI via sudo, SSH to a login node, slurmrestd."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from gateway.lab import Lab
from gateway.lab.procs import pid_alive
from schedulers.backends import SlurmScheduler
from schedulers.errors import SubmitError
from schedulers.model import JobRequest, JobState
from schedulers.runners import SSHRunner, SudoRunner
from schedulers.slurmrest import SlurmRestScheduler
from schedulers.watcher import JobWatcher
from tests.helpers.lab import job_output, wait_for_file, workdir

pytestmark = pytest.mark.lab

SLEEP = "sleep 600\n"
Outputs = Callable[[str], str]  # user -> a fresh output path in their lab home


def cli(lab: dict) -> SlurmScheduler:
    return SlurmScheduler(SudoRunner(env=lab["slurm"]["env"]), jobcomp_file=lab["slurm"]["jobcomp"])


async def wait_until(watcher: JobWatcher, job_id: str, predicate, timeout: float):
    """The watcher's wait_for, failing with the last status seen rather than a bare timeout."""
    try:
        return await watcher.wait_for(job_id, predicate, timeout)
    except TimeoutError:
        raise AssertionError(f"job {job_id} after {timeout} s: {watcher.latest(job_id)!r}; "
                             f"last error: {watcher.last_error!r}") from None


@pytest.fixture(scope="module")
def outputs(lab: dict) -> Iterator[Outputs]:
    """Job output files in the users' lab homes (never /home), removed after the module."""
    made: list[Path] = []

    def output_path(user: str) -> str:
        made.append(job_output(lab, user, "sched-test"))
        return str(made[-1])

    try:
        yield output_path
    finally:
        for path in made:
            path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
async def timeout_job(lab: dict, outputs: Outputs) -> str:
    """A job with a one-minute walltime, submitted early: Slurm kills it about 60-90 s later."""
    req = JobRequest(script=SLEEP, name="walltime-test", walltime=timedelta(minutes=1), node="c1",
                     output=outputs("alice"), workdir=str(workdir(lab, "alice")))
    return await cli(lab).submit(req, "alice")


async def test_submit_as_alice_runs_and_completes(lab: dict, timeout_job: str, outputs: Outputs) -> None:
    sched = cli(lab)
    out = outputs("alice")
    req = JobRequest(script="id -un\nsleep 1\n", name="complete-test", node="c2", output=out,
                     environment={"GREETING": "it's a 'quoted' $value"}, cpus=2, memory_mb=500,
                     walltime=timedelta(minutes=5))
    job_id = await sched.submit(req, "alice")
    watcher = JobWatcher(sched, fast_interval=0.2)
    watcher.track(job_id)
    try:
        states = []
        async for status in watcher.updates(job_id):
            states.append(status.state)
            if status.state is JobState.RUNNING:
                assert status.node == "c2"
                assert status.node_address == lab["nodes"]["c2"]["address"]
            if status.is_final:
                break
    finally:
        await watcher.stop()
    assert JobState.RUNNING in states or JobState.PENDING in states
    assert states[-1] is JobState.COMPLETED
    assert watcher.latest(job_id).exit_code == 0
    assert Path(out).read_text().strip() == "alice"
    assert Path(out).stat().st_uid == lab["users"]["alice"]["uid"]


async def test_cancel_gives_cancelled(lab: dict, outputs: Outputs) -> None:
    sched = cli(lab)
    job_id = await sched.submit(JobRequest(script=SLEEP, name="cancel-test", node="c1",
                                           output=outputs("bob")), "bob")
    watcher = JobWatcher(sched, fast_interval=0.2)
    watcher.track(job_id)
    try:
        await wait_until(watcher, job_id, lambda s: s.state is JobState.RUNNING, 20)
        await sched.cancel([job_id], user="bob")
        watcher.poke()
        final = await wait_until(watcher, job_id, lambda s: s.is_final, 20)
    finally:
        await watcher.stop()
    assert final.state is JobState.CANCELLED
    # Cancelling again is not an error: the job is gone either way.
    await sched.cancel([job_id], user="bob")


async def test_another_user_cannot_cancel_a_job(lab: dict, outputs: Outputs) -> None:
    sched = cli(lab)
    job_id = await sched.submit(JobRequest(script=SLEEP, node="c1", output=outputs("bob")), "bob")
    try:
        with pytest.raises(Exception, match="could not cancel"):
            await sched.cancel([job_id], user="carol")
    finally:
        await sched.cancel([job_id], user="bob")


async def test_over_limit_request_is_refused_in_words(lab: dict, outputs: Outputs) -> None:
    req = JobRequest(script="true\n", partition="debug", walltime=timedelta(hours=3),
                     output=outputs("alice"))
    with pytest.raises(SubmitError) as err:
        await cli(lab).submit(req, "alice")
    assert err.value.message == "Partition 'debug' allows at most 30 minutes; you asked for 3 hours."
    assert "time limit" in err.value.raw


async def test_pending_reason_in_plain_words(lab: dict, outputs: Outputs) -> None:
    sched = cli(lab)
    # The whole of c2 for one job, then a second that must wait for it (c1 holds the walltime job).
    big = JobRequest(script=SLEEP, node="c2", cpus=16, memory_mb=8000, output=outputs("carol"))
    first = await sched.submit(big, "carol")
    second = await sched.submit(big, "carol")
    watcher = JobWatcher(sched, fast_interval=0.2)
    watcher.track(first)
    watcher.track(second)
    try:
        await wait_until(watcher, first, lambda s: s.state is JobState.RUNNING, 20)
        waiting = await wait_until(watcher, second, lambda s: s.reason == "Resources", 20)
    finally:
        await watcher.stop()
        await sched.cancel([first, second], user="carol")
    assert waiting.state is JobState.PENDING
    assert waiting.reason_text == "Queued: waiting for free cores, memory or GPUs"
    assert not waiting.reason_is_permanent


async def test_ssh_runner_submits_on_the_login_node(lab: dict, outputs: Outputs) -> None:
    ssh = lab["ssh"]
    runner = SSHRunner(ssh["host"], ssh["port"], known_hosts=ssh["known_hosts"],
                       key_for_user=lambda user: ssh["user_keys"][user], env=lab["slurm"]["env"],
                       service_user="carol")
    sched = SlurmScheduler(runner, jobcomp_file=lab["slurm"]["jobcomp"])
    out = outputs("alice")
    try:
        ids = [await sched.submit(JobRequest(script="id -un\n", node="c1", output=out,
                                             name=f"ssh-{i}"), "alice") for i in range(3)]
        # One connection, alice's own, carried all three submissions.
        assert list(runner._connections) == ["alice"]
        # The batched query is nobody's: it logs in as the service account.
        assert set(await sched.status(ids)) <= set(ids)
        assert list(runner._connections) == ["alice", "carol"]
    finally:
        await runner.close()
    watcher = JobWatcher(cli(lab), fast_interval=0.2)
    for job_id in ids:
        watcher.track(job_id)
    try:
        for job_id in ids:
            final = await wait_until(watcher, job_id, lambda s: s.is_final, 30)
            assert final.state is JobState.COMPLETED
    finally:
        await watcher.stop()
    # Three jobs wrote the same file: every line says alice.
    assert set(Path(out).read_text().split()) == {"alice"}


async def test_rest_transport_submits_watches_and_cancels(lab: dict, outputs: Outputs) -> None:
    rest = SlurmRestScheduler(lab["slurm"]["rest_url"], lab["slurm"]["jwt_key"],
                              jobcomp_file=lab["slurm"]["jobcomp"])
    out = outputs("bob")
    try:
        job_id = await rest.submit(JobRequest(script="id -un\nsleep 600\n", partition="debug",
                                              output=out, workdir=str(workdir(lab, "bob")),
                                              walltime=timedelta(minutes=5)), "bob")
        watcher = JobWatcher(rest, fast_interval=0.2)
        watcher.track(job_id)
        try:
            running = await wait_until(watcher, job_id, lambda s: s.state is JobState.RUNNING, 20)
            assert running.raw["user_name"] == "bob"
            assert running.node_address == lab["nodes"][running.node]["address"]
            # RUNNING comes before the script's first line: cancel only once `id -un` has written.
            await asyncio.to_thread(wait_for_file, out, "bob")
            await rest.cancel([job_id], user="bob")
            watcher.poke()
            final = await wait_until(watcher, job_id, lambda s: s.is_final, 20)
        finally:
            await watcher.stop()
        assert final.state is JobState.CANCELLED
        with pytest.raises(SubmitError, match="walltime|time"):
            await rest.submit(JobRequest(script="true\n", partition="debug", output=out,
                                         walltime=timedelta(hours=3)), "bob")
    finally:
        await rest.close()
    assert Path(out).read_text().startswith("bob")


async def test_controller_down_reads_unknown_not_gone_then_recovers(lab: dict, outputs: Outputs) -> None:
    sched = cli(lab)
    job_id = await sched.submit(JobRequest(script=SLEEP, node="c2", output=outputs("alice")),
                                "alice")
    watcher = JobWatcher(sched, fast_interval=0.2, max_backoff=1)
    watcher.track(job_id)
    try:
        await wait_until(watcher, job_id, lambda s: s.state is JobState.RUNNING, 20)
        ctld = lab["pids"]["slurmctld"]
        os.kill(ctld, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while pid_alive(ctld) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        try:
            os.waitpid(ctld, os.WNOHANG)
        except ChildProcessError:
            pass
        down = await wait_until(watcher, job_id, lambda s: s.state is JobState.UNKNOWN, 30)
        assert "not answering" in down.reason_text
        # Several failed ticks (each squeue waits about 9 s for the dead controller) change nothing.
        deadline = time.monotonic() + 40
        while watcher.failures < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert watcher.failures >= 3
        assert watcher.latest(job_id).state is JobState.UNKNOWN
        # Bring the controller back the way an admin would: the lab restarts what is missing.
        info = await asyncio.to_thread(Lab(lab["dir"]).up, 2)
        lab["pids"] = info["pids"]
        back = await wait_until(watcher, job_id, lambda s: s.state is JobState.RUNNING, 30)
        assert back.node == "c2"
    finally:
        await watcher.stop()
        await sched.cancel([job_id], user="alice")


async def test_walltime_kill_reads_timeout_with_reason(lab: dict, timeout_job: str, outputs: Outputs) -> None:
    watcher = JobWatcher(cli(lab), fast_interval=0.5)
    watcher.track(timeout_job)
    try:
        final = await wait_until(watcher, timeout_job, lambda s: s.is_final, 150)
    finally:
        await watcher.stop()
    assert final.state is JobState.TIMEOUT
    assert final.reason_text == "The job reached its walltime and was stopped."
