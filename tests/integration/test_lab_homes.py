"""Each lab keeps its users' files in its own directory: `DIR/home/USER`, private to the user, named
by the lab's directory as homeDirectory. The Unix accounts' /home is shared by every lab on the
machine, and nothing a job does there."""

from __future__ import annotations

import os
import ssl
import stat
import uuid
from datetime import timedelta
from pathlib import Path

import ldap3
import pytest

from schedulers.backends import SlurmScheduler
from schedulers.model import JobRequest, JobState
from schedulers.runners import SudoRunner
from schedulers.watcher import JobWatcher
from tests.helpers.lab import USERS, new_in_unix_homes, passwords, unix_homes, workdir

pytestmark = pytest.mark.lab


def test_each_user_has_a_private_home_in_this_lab(lab: dict) -> None:
    homes = Path(lab["dir"]) / "home"
    assert stat.S_IMODE(homes.stat().st_mode) == 0o755  # traversable, listable by nobody's choice
    for user in USERS:
        path = workdir(lab, user)
        assert path == homes / user
        st = path.stat()
        assert (st.st_uid, st.st_gid) == (lab["users"][user]["uid"], lab["users"][user]["gid"])
        assert stat.S_IMODE(st.st_mode) == 0o700
        assert lab["users"][user]["home"] == f"/home/{user}"  # the Unix account's stays


def test_the_directory_names_this_labs_homes(lab: dict) -> None:
    ldap = lab["ldap"]
    tls = ldap3.Tls(ca_certs_file=ldap["ca_cert"], validate=ssl.CERT_REQUIRED)
    server = ldap3.Server(ldap["host"], port=ldap["port"], tls=tls, get_info=ldap3.NONE)
    conn = ldap3.Connection(server, ldap["service_dn"], passwords(lab)["svc-hpcgate"],
                            auto_bind=ldap3.AUTO_BIND_TLS_BEFORE_BIND, receive_timeout=5)
    conn.search(ldap["people_dn"], "(objectClass=posixAccount)", attributes=["uid", "homeDirectory"])
    assert {e.uid.value: e.homeDirectory.value for e in conn.entries} == {
        u: lab["users"][u]["workdir"] for u in USERS}
    conn.unbind()


async def test_a_job_run_as_the_spawner_runs_it_leaves_the_unix_home_untouched(lab: dict) -> None:
    """The spawner's path without a hub: the launch file written as the user through sudo, the job
    submitted as the user, working in the lab's home and logging in its state directory."""
    before = unix_homes(lab)
    home = workdir(lab, "alice")
    state = home / ".hpcgate" / "servers" / f"homes-{uuid.uuid4().hex[:8]}"
    runner = SudoRunner(env=lab["slurm"]["env"])
    sched = SlurmScheduler(runner, jobcomp_file=lab["slurm"]["jobcomp"])
    python = os.environ.get("HPCGATE_JOB_PYTHON", "/opt/hpcgate/venv/bin/python")
    try:
        wrote = await runner.run([python, "-m", "gateway.job.launcher", "--write",
                                  str(state / "launch.json")], user="alice", input="{}", timeout=30)
        assert wrote.returncode == 0, wrote.stderr
        # What a server does on start: Python and Jupyter settle in, files appear in its root.
        script = ("echo cwd=$PWD\ntouch made-by-the-job\n"
                  f"{python} -c 'import jupyter_core.paths as p; print(p.jupyter_runtime_dir())'\n")
        req = JobRequest(script=script, name="hpcgate-homes-test", node="c2",
                         workdir=str(home), output=str(state / "job.log"),
                         environment={"HOME": str(home)}, walltime=timedelta(minutes=2))
        job_id = await sched.submit(req, "alice")
        watcher = JobWatcher(sched, fast_interval=0.2)
        watcher.track(job_id)
        try:
            final = await watcher.wait_for(job_id, lambda s: s.is_final, 60)
        finally:
            await watcher.stop()
        assert final.state is JobState.COMPLETED, final
        log = (state / "job.log").read_text()
        assert f"cwd={home}\n" in log and str(home) in log.splitlines()[-1], log
        assert (home / "made-by-the-job").stat().st_uid == lab["users"]["alice"]["uid"]
        assert new_in_unix_homes(lab, before) == {}
    finally:
        (home / "made-by-the-job").unlink(missing_ok=True)
        for path in sorted(state.glob("*")):
            path.unlink()
        if state.exists():
            state.rmdir()
