"""PBS through fake qsub / qstat / qdel on the policy's command_path, run as the lab users through
the real sudo runner: PATH, environment and sudo are exercised, not only the parsers.

No PBS server runs here. The fakes (tests/fakes/pbs/) replay documents captured from real PBS
servers (the shared fixtures), substituting only a job's id, owner and name; a test moves a job
from state to state by rewriting its file in the fakes' state directory.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.hub.scheduling import scheduler_settings
from gateway.policy import load_policy
from schedulers import pbs
from schedulers.errors import SchedulerUnavailable
from schedulers.model import JobRequest, JobState, JobStatus
from schedulers.pbs_backend import PbsScheduler, resolve_host
from schedulers.registry import make_runner, make_scheduler
from schedulers.runners import DEFAULT_PATH, SudoRunner
from schedulers.watcher import JobWatcher
from tests.helpers.lab import USERS, workdir
from tests.helpers.paths import REPO, SHARED

pytestmark = pytest.mark.lab

FAKES = REPO / "tests" / "fakes" / "pbs"
STATE_VAR = "HPCGATE_FAKE_PBS_DIR"
SITE = REPO / "site_configs" / "pbs-site.yaml"
SITE_PATH = "/opt/pbs/bin:/usr/local/bin:/usr/bin:/bin"
"""The example site's command_path: where a real PBS install keeps qsub, and no fake."""
SERVER = "meta-pbs.metacentrum.cz"  # the server part of the captured qsub output the fake replays


@dataclass(frozen=True)
class FakePbs:
    root: Path
    bin: Path
    """The fake commands: a directory outside the default PATH."""
    state: Path

    def policy(self, command_path: str, name: str = "site") -> Path:
        """The example PBS site, with `command_path` and the fakes' state directory."""
        text = SITE.read_text()
        for old, new in ((f"command_path: {SITE_PATH}\n", f"command_path: {command_path}\n"),
                         ("    PBS_CONF_FILE: /etc/pbs.conf\n",
                          f"    PBS_CONF_FILE: /etc/pbs.conf\n    {STATE_VAR}: {self.state}\n")):
            assert old in text, f"{SITE} changed: no {old.strip()!r} to replace"
            text = text.replace(old, new)
        path = self.root / f"{name}.yaml"
        path.write_text(text)
        return path

    def calls(self, command: str) -> list[dict[str, Any]]:
        """Every run of `command`: argv, user, uid, environment, stdin."""
        log = self.state / "calls.jsonl"
        lines = log.read_text().splitlines() if log.exists() else []
        return [c for c in map(json.loads, lines) if c["command"] == command]

    def job(self, job_id: str) -> dict[str, Any]:
        return json.loads(self._job_file(job_id).read_text())

    def set_state(self, job_id: str, state: str) -> None:
        """What the PBS server would do next to the job (start it, hold it...)."""
        tmp = self.state / "jobs" / ".test-edit"
        tmp.write_text(json.dumps({**self.job(job_id), "state": state}))
        tmp.chmod(0o666)  # qdel, run as the job's user, rewrites it
        tmp.replace(self._job_file(job_id))

    def _job_file(self, job_id: str) -> Path:
        return self.state / "jobs" / f"{job_id.split('.', 1)[0]}.json"


@pytest.fixture(scope="module")
def fake_pbs(lab: dict) -> Iterator[FakePbs]:
    """The fakes in a fresh directory under /var/tmp (searchable by the lab users), removed after."""
    # Never a skip: without sudo or the lab users nothing here would be exercised.
    if shutil.which("sudo") is None:
        pytest.fail("sudo is not installed: the sudo runner cannot run commands as the lab users")
    for user in USERS:
        try:
            pwd.getpwnam(user)
        except KeyError:
            pytest.fail(f"the lab user {user} has no Unix account")
    # The fakes are the only PBS on this host: otherwise the PATH checks below prove nothing.
    for command in ("qsub", "qstat", "qdel"):
        assert shutil.which(command, path=f"{DEFAULT_PATH}:{SITE_PATH}") is None, command
    root = Path(tempfile.mkdtemp(prefix="hpcgate-fakepbs-", dir="/var/tmp"))
    try:
        root.chmod(0o755)
        (root / "bin").mkdir(mode=0o755)
        for name in ("qsub", "qstat", "qdel", "fakepbs.py"):
            shutil.copy(FAKES / name, root / "bin" / name)
            (root / "bin" / name).chmod(0o644 if name.endswith(".py") else 0o755)
        (root / "state").mkdir()
        (root / "state").chmod(0o777)  # the fakes write here as whoever runs them
        (root / "state" / "captured").symlink_to(SHARED / "fixtures" / "pbs")
        yield FakePbs(root, root / "bin", root / "state")
        unfinished = [p.name for p in (root / "state" / "jobs").glob("*.json")
                      if json.loads(p.read_text())["state"] not in ("finished", "deleted")]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    assert not root.exists()
    assert not unfinished, f"the tests left jobs behind: {unfinished}"


def hub_objects(policy_file: Path) -> tuple[Any, PbsScheduler, SudoRunner]:
    """The policy, and the scheduler and runner as the hub builds them from its cluster section."""
    policy = load_policy(policy_file)
    settings = scheduler_settings(policy.cluster)
    runner = make_runner(settings)
    scheduler = make_scheduler(settings, runner)
    assert isinstance(runner, SudoRunner) and isinstance(scheduler, PbsScheduler)
    return policy, scheduler, runner


async def wait_until(watcher: JobWatcher, job_id: str, predicate: Callable[[JobStatus], bool],
                     timeout: float = 10) -> JobStatus:
    try:
        return await watcher.wait_for(job_id, predicate, timeout)
    except TimeoutError:
        raise AssertionError(f"job {job_id} after {timeout} s: {watcher.latest(job_id)!r}; "
                             f"last error: {watcher.last_error!r}") from None


async def test_hub_submits_watches_and_cancels_through_the_policys_command_path(
        lab: dict, fake_pbs: FakePbs, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_pbs
    monkeypatch.setenv("HPCGATE_HUB_ONLY", "the hub's own environment")  # must not reach qsub
    command_path = f"{fake.bin}:{SITE_PATH}"
    policy, scheduler, runner = hub_objects(fake.policy(command_path))
    home = str(workdir(lab, "alice"))
    req = JobRequest(script="exec hpcgate-launch\n", name="hpcgate-alice", partition="debug", cpus=4,
                     memory_mb=16384, walltime=timedelta(minutes=30), workdir=home,
                     output=f"{home}/job.log", extra_directives=policy.job.extra_directives)
    job_id = await scheduler.submit(req, "alice")
    assert re.fullmatch(rf"\d+\.{re.escape(SERVER)}", job_id), job_id

    qsub = fake.calls("qsub")[-1]
    assert (qsub["user"], qsub["uid"]) == ("alice", lab["users"]["alice"]["uid"])
    env = qsub["env"]
    assert env["PATH"] == command_path  # the policy's PATH found qsub, first in it
    assert (env["PBS_CONF_FILE"], env[STATE_VAR]) == ("/etc/pbs.conf", str(fake.state))
    assert "HPCGATE_HUB_ONLY" not in env and env["SUDO_USER"] == "root"
    assert qsub["argv"] == []  # everything is in the script's header: no -v with the environment
    assert qsub["stdin"] == pbs.build_script(req)
    header = [line for line in qsub["stdin"].splitlines() if line.startswith("#PBS ")]
    assert header == ["#PBS -N hpcgate-alice", "#PBS -S /bin/bash", "#PBS -q debug",
                      "#PBS -l select=1:ncpus=4:mem=16384mb", "#PBS -l walltime=00:30:00",
                      f"#PBS -o {home}/job.log", "#PBS -j oe", "#PBS -k oed",
                      "#PBS -l filesystems=home:eagle"]

    watcher = JobWatcher(scheduler, fast_interval=policy.cluster.poll_starting,
                         slow_interval=policy.cluster.poll_steady)
    watcher.track(job_id)
    try:
        queued = await wait_until(watcher, job_id, lambda s: s.state is not JobState.UNKNOWN)
        assert queued.state is JobState.PENDING
        assert queued.reason_text == "Queued: waiting for free 'at_queue' (a site resource)"
        # The watcher asks as the hub's own user (no identity needed), with the policy's PATH.
        query = fake.calls("qstat")[-1]
        assert query["user"] == "root" and query["argv"] == ["-x", "-f", "-F", "json", job_id]
        assert query["env"]["PATH"] == command_path and "HPCGATE_HUB_ONLY" not in query["env"]

        fake.set_state(job_id, "held")
        watcher.poke()
        held = await wait_until(watcher, job_id, lambda s: s.state is JobState.HELD)
        assert held.reason_text == "Held by you: release the job (qrls) to let it start"

        fake.set_state(job_id, "running")
        watcher.poke()
        running = await wait_until(watcher, job_id, lambda s: s.state is JobState.RUNNING)
        # The captured job ran on MetaCentrum's charon24 (exec_host charon24/0*2+charon21/0*2).
        # Its address is what the hub's resolver says: on the lab host nothing (None), never invented.
        assert running.node == "charon24"
        assert running.node_address == resolve_host("charon24")

        await scheduler.cancel([job_id], "alice")
        [qdel] = fake.calls("qdel")
        assert (qdel["user"], qdel["argv"], qdel["env"]["PATH"]) == ("alice", [job_id], command_path)
        watcher.poke()
        final = await wait_until(watcher, job_id, lambda s: s.is_final)
        assert final.state is JobState.CANCELLED
        assert final.reason.endswith("and terminated")  # PBS's comment on the deleted job
        assert final.node == "charon24"  # what was known of the node is kept
        # Cancelling a job that already ended is harmless ("qdel: Job has finished", exit 35).
        await scheduler.cancel([job_id], "alice")
        assert len(fake.calls("qdel")) == 2 and fake.job(job_id)["state"] == "deleted"
    finally:
        await watcher.stop()
        await runner.close()


async def test_queue_limits_come_from_the_captured_queue_document(fake_pbs: FakePbs) -> None:
    _, scheduler, _ = hub_objects(fake_pbs.policy(f"{fake_pbs.bin}:{SITE_PATH}"))
    limits = await scheduler.queue_limits()
    assert list(limits) == ["workq"] and limits["workq"].enabled and limits["workq"].started
    assert fake_pbs.calls("qstat")[-1]["argv"] == ["-Q", "-f", "-F", "json"]


def orphans_cli(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", "jobs", "orphans", "--config",
                           str(config), *extra], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


async def test_jobs_orphans_lists_and_cancels_through_the_fakes(fake_pbs: FakePbs) -> None:
    from jupyterhub import orm

    fake = fake_pbs
    policy_file = fake.policy(f"{fake.bin}:{SITE_PATH}")
    _, scheduler, runner = hub_objects(policy_file)
    # bob's job no server owns (its hub died after qsub); carol's belongs to her server.
    stray = await scheduler.submit(JobRequest(script="sleep 600\n", name="hpcgate-bob"), "bob")
    owned = await scheduler.submit(JobRequest(script="sleep 600\n", name="hpcgate-carol"), "carol")
    try:
        db_url = f"sqlite:///{fake.root / 'jupyterhub.sqlite'}"
        db = orm.new_session_factory(db_url)()
        carol = orm.User(name="carol")
        db.add(carol)
        db.commit()
        db.add(orm.Spawner(user_id=carol.id, name="", state={"job_id": owned}))
        db.commit()
        db.close()
        config = fake.root / "jupyterhub_config.py"
        config.write_text(f"c = get_config()  # noqa\nc.BatchSpawner.policy_file = {str(policy_file)!r}\n"
                          f"c.JupyterHub.db_url = {db_url!r}\n")

        listed = orphans_cli(config, "--json")
        assert listed.returncode == 1, listed.stderr
        assert json.loads(listed.stdout) == [{"job_id": stray, "user": "bob", "name": "hpcgate-bob",
                                              "state": "PENDING", "node": None}]
        listing = fake.calls("qstat")[-1]  # the server's current jobs: no -x, no ids
        assert (listing["user"], listing["argv"]) == ("root", ["-f", "-F", "json"])

        cancelled = orphans_cli(config, "--cancel")
        assert cancelled.returncode == 0, cancelled.stderr
        assert f"job {stray}" in cancelled.stdout and "Cancelled 1 job(s)." in cancelled.stdout
        qdel = fake.calls("qdel")[-1]
        assert (qdel["user"], qdel["argv"]) == ("root", [stray])
        assert (fake.job(stray)["state"], fake.job(owned)["state"]) == ("deleted", "queued")
        assert orphans_cli(config).stdout.startswith("No orphan jobs")
    finally:  # qdel of a job that already ended is harmless
        await scheduler.cancel([owned], "carol")
        await scheduler.cancel([stray], "bob")
        await runner.close()
    assert fake.job(owned)["state"] == "deleted"


async def test_without_the_fake_directory_on_command_path_nothing_finds_qsub(fake_pbs: FakePbs) -> None:
    fake = fake_pbs
    _, scheduler, _ = hub_objects(fake.policy(SITE_PATH, "site-without-fakes"))
    submitted = len(fake.calls("qsub"))
    req = JobRequest(script="sleep 600\n", name="hpcgate-alice")
    with pytest.raises(SchedulerUnavailable) as err:
        await scheduler.submit(req, "alice")
    assert err.value.message == (
        f"The command `qsub` is not in the scheduler's PATH for alice ({SITE_PATH}): set "
        "cluster.command_path in the site policy to include the directory that holds it.")
    with pytest.raises(SchedulerUnavailable) as err:  # the watcher's query, as the hub's user
        await scheduler.status([f"1.{SERVER}"])
    assert err.value.message.startswith("The command `qstat` is not in the scheduler's PATH on the hub")
    assert len(fake.calls("qsub")) == submitted  # no fake ran
    # The admin's command says the same in a sentence, not a traceback.
    config = fake.root / "jupyterhub_config-without-fakes.py"
    config.write_text(f"c = get_config()  # noqa\nc.BatchSpawner.policy_file = "
                      f"{str(fake.root / 'site-without-fakes.yaml')!r}\n"
                      f"c.JupyterHub.db_url = 'sqlite:///{fake.root / 'empty.sqlite'}'\n")
    said = orphans_cli(config)
    assert said.returncode == 2 and "Traceback" not in said.stderr, said.stderr
    assert "The command `qstat` is not in the scheduler's PATH" in said.stderr

    # On the PATH but out of the users' reach: said as such, not as PBS refusing the job.
    _, scheduler, _ = hub_objects(fake.policy(f"{fake.bin}:{SITE_PATH}"))
    fake.bin.chmod(0o700)
    try:
        with pytest.raises(SchedulerUnavailable) as err:
            await scheduler.submit(req, "alice")
        assert "`qsub` is in the scheduler's PATH" in err.value.message
        assert "alice may not run it" in err.value.message
    finally:
        fake.bin.chmod(0o755)
    assert len(fake.calls("qsub")) == submitted
