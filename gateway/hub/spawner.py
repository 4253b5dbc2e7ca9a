"""The JupyterHub spawner: a researcher's JupyterLab in a batch job, under their own identity.

start(): write the server's launch file as the user (token inside, mode 0600), submit the job as
the user, follow it through the hub's one watcher (no scheduler call of its own), tell the user
what the queue is doing, and return when the launcher in the job reports where it listens.
Any ending of the job before that ends start() at once with the reason and the job's last lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import os
import pwd
import re
import shlex
import time
from typing import Any

from jupyterhub.spawner import Spawner, SpawnException
from tornado import web
from traitlets import Float, Unicode, default

from auth.hublog import follow_hub_log
from gateway.depots.links import spawner_launch_entry
from gateway.hub import api as hubapi
from gateway.hub import handlers_installed, sessions
from gateway.hub.connections import ConnectionMode, connection_from_state, make_connection
from gateway.hub.jobspec import job_setup
from gateway.hub.metrics import spawn_phase
from gateway.hub.scheduling import shared
from gateway.policy.load import PolicyFileError
from schedulers.errors import SchedulerError, SchedulerUnavailable, SubmitError
from schedulers.model import JobRequest, JobState, JobStatus, UnsafeValue, format_duration

_SERVER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_POLICY_FILES: dict[str, Any] = {}  # policy_file -> its PolicyFile (re-read when it changes)
_REFUSED_FORMS: dict[str, tuple[dict[str, Any], str | None, str]] = {}
"""user -> (what they typed, the field, the sentence) of their last refused form."""


class FormRefused(web.HTTPError):
    """A spawn form the policy refuses: HTTP 400, and no message of JupyterHub's own above the
    form (the sentence stands next to its field; see get_options_form)."""

    jupyterhub_message = None

    def __init__(self, sentence: str):
        super().__init__(400, sentence)


class BatchSpawner(Spawner):
    """JupyterLab in a batch job on a compute node, started and watched by the hub.

    Everything about the cluster, the job and the connection comes from the site policy; the
    traits here are JupyterHub's own world (where the policy is, how long stop() waits).
    """

    policy_file = Unicode(
        "/etc/hpcgate/site.yaml",
        help="The site policy (YAML, see site_configs/): the scheduler and how to reach it, the "
             "partitions and their limits, per-group rules, the job's environment, the connection "
             "mode, depots. Re-read when it changes; check it with `hpcgate check-config FILE`.",
    ).tag(config=True)
    stop_timeout = Float(60, help="Seconds stop() waits for the job's final state.").tag(config=True)

    @default("start_timeout")
    def _default_start_timeout(self) -> int:
        return 600  # queued jobs wait; the user sees why in the progress messages

    @default("http_timeout")
    def _default_http_timeout(self) -> int:
        return 120

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        follow_hub_log(self.log)  # the watcher's and tunnels' lines in the hub's own format

    # -- state ------------------------------------------------------------------------------------

    job_id: str = ""
    job_host: str = ""
    job_port: int = 0
    token_digest: str = ""
    job_request: dict[str, Any] | None = None
    """What the job asked the scheduler for (partition, account, cores...), for the session's card."""
    submitted_at: float = 0.0
    submitting: float = 0.0
    """When sbatch was started and its job id is not known yet (0 otherwise): a hub killed in
    between finds the job by its name on restart instead of losing the server."""
    ending: str = ""
    """What the launcher said as the job ended on its own ("time-limit"), for the history."""
    history: list[dict[str, Any]] = []
    """The last ended sessions of this server, newest first (kept across stops; see sessions.py)."""
    _connection: ConnectionMode | None = None
    _readoption_end: int | None = None
    """poll()'s answer once a re-adopted start ended (stopped, the job ended, timed out)."""
    _cancelling: asyncio.Future[None] | None = None
    """The cancel of a re-adopted job that will not serve (held so that it runs to its end)."""

    @property
    def connection(self) -> ConnectionMode:
        """This server's connection mode (direct until start() or load_state() says otherwise)."""
        if self._connection is None:
            self._connection = ConnectionMode(self._log_name, log=self.log)
        return self._connection

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self.job_id = state.get("job_id", "")
        self.job_host = state.get("host", "")
        self.job_port = state.get("port", 0)
        self.token_digest = state.get("token_digest", "")
        self.job_request = state.get("request")
        self.submitted_at = state.get("submitted", 0.0)
        self.submitting = state.get("submitting", 0.0)
        self.ending = state.get("ending", "")
        self.history = list(state.get("history", []))
        if "connect" in state:
            self._connection = connection_from_state(self._log_name, state, self._policy_section(),
                                                     self.log)

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        if self.job_id:
            state.update(job_id=self.job_id, host=self.job_host, port=self.job_port,
                         token_digest=self.token_digest, request=self.job_request,
                         submitted=self.submitted_at, ending=self.ending)
        elif self.submitting:  # what the job's launcher will report with, once it is found
            state.update(submitting=self.submitting, token_digest=self.token_digest,
                         request=self.job_request)
        if self.history:  # survives clear_state(): what happened to the last sessions
            state["history"] = self.history
        saved = self.connection.save()
        # Also before the job exists: whose line in authorized_keys a reverse tunnel's key is.
        if self.job_id or saved.get("tunnel_tag"):
            state.update(saved)
        return state

    def clear_state(self) -> None:
        super().clear_state()
        self.job_id, self.job_host, self.job_port, self.token_digest = "", "", 0, ""
        self.job_request, self.submitted_at, self.ending = None, 0.0, ""
        self.submitting = 0.0
        self._connection = None
        self._readoption_end = None

    def _save_state_now(self) -> None:
        # JupyterHub stores state only once start() returns; a hub that dies while the job is
        # queued must still find it on restart.
        if self.orm_spawner is not None and self.db is not None:
            self.orm_spawner.state = self.get_state()
            self.db.commit()

    # -- helpers ----------------------------------------------------------------------------------

    def scheduler_connection(self) -> tuple[Any, Any, Any]:
        """The hub's scheduler, runner and watcher for the policy's cluster (shared by every
        spawner of the hub); SpawnException when the policy cannot give one."""
        return self._shared()

    def _shared(self) -> tuple[Any, Any, Any]:
        """The hub's scheduler, runner and watcher for the policy's cluster."""
        try:
            return shared(self.site_policy().cluster)
        except ValueError as err:
            raise SpawnException("This hub cannot reach its scheduler; please tell an "
                                 "administrator.", reason="hub-config", log_message=str(err)) from err

    async def unix_account(self) -> tuple[str, str]:
        """(Unix user, home) from the directory's auth_state, else the local account."""
        auth_state = await self.user.get_auth_state() or {}
        name = auth_state.get("uid") or self.user.name
        if name != self.user.name:
            # Jobs run as the hub user's own name: an auth_state naming someone else (edited
            # through the API by whoever holds admin:auth_state) never picks the identity.
            self.log.error("auth_state of %s names the account %r: refusing to spawn",
                           self.user.name, name)
            raise SpawnException("Your account record does not match your login; please tell an "
                                 "administrator.", reason="identity")
        home = auth_state.get("homeDirectory") or ""
        if not home:
            try:
                home = (await asyncio.to_thread(pwd.getpwnam, name)).pw_dir
            except KeyError as err:
                raise SpawnException(f"There is no account {name!r} on the cluster.",
                                     reason="no-account") from err
        return name, home

    def _job_name(self) -> str:
        return f"hpcgate-{self.user.name}" + (f"-{self.name}" if self.name else "")

    def site_policy(self) -> Any:
        """The site policy (also read by the /hub/depots page); SpawnException when it cannot
        be loaded and no earlier version of it was (a broken edit keeps the last good one)."""
        from gateway.policy.config import PolicyFile

        # One reader per file for the whole hub: every spawner (hundreds at a hub's start) shares
        # its parsed policy instead of parsing the YAML again for itself.
        reader = _POLICY_FILES.get(self.policy_file)
        if reader is None:
            reader = _POLICY_FILES[self.policy_file] = PolicyFile(self.policy_file, self.log)
        try:
            return reader.policy()
        except PolicyFileError as err:
            raise SpawnException("This hub's site policy cannot be read; please tell an "
                                 "administrator.", reason="hub-config",
                                 log_message=str(err)) from err

    def _policy_section(self) -> Any:
        """The policy's `connection` section, or None when the policy cannot be read."""
        with contextlib.suppress(SpawnException):
            return self.site_policy().connection
        return None

    async def user_groups(self, user: str) -> list[str]:
        """The user's directory groups (auth_state), else hub groups, else Unix groups."""
        auth_state = await self.user.get_auth_state() or {}
        if auth_state.get("groups"):
            return list(auth_state["groups"])
        hub_groups = [g.name for g in getattr(self.user, "groups", [])]
        if hub_groups:
            return hub_groups
        return await asyncio.to_thread(_unix_groups, user)  # NSS may ask a directory: not on the loop

    async def get_options_form(self) -> str:  # type: ignore[override]
        policy = self.site_policy()
        from gateway.policy import render_form

        user, _ = await self.unix_account()
        # A form just refused comes back with what the user typed and the sentence by its field.
        # JupyterHub renders a refused named server's form through the default spawner, so the
        # refusal is kept on the user, for the next form shown to them, once.
        refused = _REFUSED_FORMS.pop(self.user.name, None)
        if refused is not None:
            return render_form(policy, await self.user_groups(user), previous=refused[0],
                               error=(refused[1], refused[2]))
        return render_form(policy, await self.user_groups(user), previous=self.user_options)

    async def options_from_form(self, form_data: dict[str, list[str]]) -> dict[str, Any]:  # type: ignore[override]
        """The form's values as user_options, checked here already so that a refusal comes
        back on the form itself (JupyterHub re-renders it with our sentence next to the field),
        not as a failed spawn. start() checks again: options also arrive through the API."""
        from gateway.policy import PolicyError, check_server_count, options_from_form, validate_options

        options = options_from_form(form_data)
        policy = self.site_policy()
        user, _ = await self.unix_account()
        groups = await self.user_groups(user)
        running = sum(1 for s in self.user.spawners.values() if s is not self and s.active)
        try:
            check_server_count(policy, groups, running)
            validate_options(policy, groups, options)
        except PolicyError as err:
            _REFUSED_FORMS[self.user.name] = (options, err.field, err.message)
            raise FormRefused(err.message) from None
        return options

    async def _request_fields(self, user: str) -> dict[str, Any]:
        """Partition, account, cores, memory, GPUs and walltime the user may have, validated."""
        from gateway.policy import PolicyError, check_server_count, validate_options

        policy = self.site_policy()
        groups = await self.user_groups(user)
        running = sum(1 for s in self.user.spawners.values() if s is not self and s.active)
        try:
            check_server_count(policy, groups, running)
            return validate_options(policy, groups, self.user_options or {}).job_request_fields()
        except PolicyError as err:
            raise SpawnException(err.message, reason="policy") from err

    # -- progress ---------------------------------------------------------------------------------

    def _emit(self, progress: int, message: str) -> None:
        if not hasattr(self, "_events"):
            self._events: list[dict[str, Any]] = []
            self._events_changed = asyncio.Event()
        if self._events and self._events[-1]["message"] == message:
            return
        self._events.append({"progress": progress, "message": message})
        self.log.info("%s: %s", self._log_name, message)
        self._events_changed.set()

    async def progress(self):  # type: ignore[override]
        """Every message start() has emitted, then new ones as they come."""
        if not hasattr(self, "_events"):
            self._emit(0, "Preparing your server")
        sent = 0
        while True:
            while sent < len(self._events):
                yield self._events[sent]
                sent += 1
            self._events_changed.clear()
            await self._events_changed.wait()

    @staticmethod
    def _describe(status: JobStatus) -> str:
        if status.state.is_waiting:
            text = status.reason_text or "Queued"
            if status.estimated_start:
                text += f" (estimated start {status.estimated_start:%H:%M})"
            return text
        if status.state is JobState.RUNNING:
            return f"Running on {status.node}, starting JupyterLab"
        if status.state is JobState.UNKNOWN:
            return status.reason_text or "Waiting for the scheduler"
        return status.reason_text or status.state.value.capitalize()

    # -- start ------------------------------------------------------------------------------------

    async def start(self) -> tuple[str, int]:  # type: ignore[override]
        try:
            return await self._start_job()
        except BaseException:
            await self.connection.release()
            raise

    async def _start_job(self) -> tuple[str, int]:
        if not handlers_installed():
            raise SpawnException(
                "This hub is not fully configured for hpcgate; please tell an administrator.",
                reason="hub-config", log_message="jupyterhub_config.py must call "
                "gateway.hub.install_handlers(): without its report API no launcher can say "
                "where its server listens")
        scheduler, runner, watcher = self._shared()
        spawn_phase(self, "start")
        self._events = []
        self._events_changed = asyncio.Event()
        self._emit(5, "Preparing your job")
        user, home = await self.unix_account()
        fields = await self._request_fields(user)
        self.job_request, self.ending = sessions.request_summary(fields), ""
        if self.name and not _SERVER_NAME.match(self.name):
            raise SpawnException(f"Server name {self.name!r} is not allowed.", reason="bad-options")
        policy = self.site_policy()
        setup = job_setup(policy, user, home, self.name)
        python, workdir, server_dir = setup.python, setup.workdir, setup.server_dir
        launch_file = f"{server_dir}/launch.json"
        log_file = f"{server_dir}/job.log"

        env = self.get_env()
        self.token_digest = hubapi.token_digest(self.api_token)
        node_addresses = {}
        if fields["node"]:
            address = await scheduler.node_address(fields["node"])
            if address:
                node_addresses[fields["node"]] = address
        # cmd: JupyterHub's own Spawner.cmd; the launcher runs jupyterhub-singleuser in-process
        # unless a site names another server (benchmarks.spawn_storm: hpcgate-minimal-server).
        launch = {"env": env, "home": home, "workdir": workdir, "args": self.get_args(),
                  "cmd": list(self.cmd),
                  "hub_host": _host_of(env.get("JUPYTERHUB_API_URL", "")),
                  "node_addresses": await self._node_addresses(scheduler, node_addresses),
                  "report_timeout": setup.report_timeout,
                  "activity": setup.launch_activity()}
        # The depots the user's groups allow, linked in depots/ by the launcher.
        launch["depots"] = await spawner_launch_entry(self, user, workdir)
        await self.connection.release()  # a start the hub died in may have left a key line
        self._connection = make_connection(self._log_name, policy.connection, self.hub.api_url,
                                           self.log)
        tunnel = await self.connection.prepare(self.user.name, self.name, self._save_state_now)
        if tunnel is not None:
            launch["tunnel"] = tunnel
        await self._write_launch_file(runner, python, user, launch_file, launch)

        body = [setup.prologue.strip(), f"exec {shlex.quote(python)} -m gateway.job.launcher "
                f"{shlex.quote(launch_file)}"]
        try:
            req = JobRequest(script="\n".join(b for b in body if b) + "\n", name=self._job_name(),
                             workdir=workdir, output=log_file, environment=setup.environment,
                             extra_directives=setup.directives,
                             end_signal_seconds=setup.end_signal if fields["walltime"] else 0,
                             **fields)
        except UnsafeValue as err:
            raise SpawnException(str(err), reason="bad-options") from err

        self._address: asyncio.Future[tuple[str, int]] = asyncio.get_running_loop().create_future()
        self.submitting = time.time()
        self._save_state_now()
        try:
            self.job_id = await scheduler.submit(req, user)
        except SubmitError as err:
            raise SpawnException(err.message, reason="submit-refused",
                                 log_message=f"{err.message} ({err.raw.strip()})") from err
        except SchedulerUnavailable as err:
            raise SpawnException("The scheduler is not answering; please try again in a minute.",
                                 reason="scheduler-down", status_code=503,
                                 log_message=f"{err.message} ({err.raw.strip()})") from err
        except UnsafeValue as err:
            raise SpawnException(str(err), reason="bad-options") from err
        finally:
            self.submitting = 0.0  # the job's id is known now, or there is no job
        self.submitted_at = time.time()
        self._save_state_now()
        self._emit(10, f"Submitted job {self.job_id}")
        spawn_phase(self, "submit", fields["partition"])
        watcher.track(self.job_id)
        try:
            host, port = await self._follow(watcher, runner, user, log_file)
        except BaseException:
            await self._cancel_quietly(scheduler, user)
            sessions.remember_end(self, watcher.latest(self.job_id),
                                  stopped_here=getattr(self, "_stop_pending", False))
            self._save_state_now()
            raise
        watcher.settled(self.job_id)
        self._emit(95, f"JupyterLab is listening on {watcher.latest(self.job_id).node}")
        self._watch_for_end(watcher)
        return host, port

    def _watch_for_end(self, watcher: Any) -> None:
        """Tell the hub the moment the watcher sees this server's job end (walltime, scancel, a
        node lost), instead of at JupyterHub's next poll (every poll_interval, 30 s)."""
        task = getattr(self, "_end_watch", None)
        if task is None or task.done():
            self._end_watch = asyncio.ensure_future(self._notify_end(watcher, self.job_id))

    async def _notify_end(self, watcher: Any, job_id: str) -> None:
        status = await watcher.wait_for(job_id, lambda s: s.is_final, None)
        if self.job_id != job_id or getattr(self, "_stop_pending", False):
            return  # stopped through the hub meanwhile: stop() says so
        # The launcher's word first: at the walltime it ends the job itself, which Slurm then
        # records COMPLETED ("finished" would mislead whoever reads this line).
        words = (sessions.how_it_ended(status, False, self.ending)[1] if self.ending
                 else self._describe(status))
        self.log.warning("The job %s of %s ended: %s", job_id, self._log_name, words)
        # JupyterHub's periodic poll is running once the server is up (its callbacks mark the
        # server stopped); before that, the next poll reads the same final state.
        if getattr(self, "_poll_callback", None) is not None:
            await self.poll_and_notify()

    async def _node_addresses(self, scheduler: Any, known: dict[str, str]) -> dict[str, str]:
        # All nodes' addresses, so the launcher binds the address the hub will route to.
        with contextlib.suppress(SchedulerError):
            return {**await scheduler.node_addresses(), **known}
        return known

    async def _write_launch_file(self, runner: Any, python: str, user: str, path: str,
                                 launch: dict[str, Any]) -> None:
        res = await runner.run([python, "-m", "gateway.job.launcher", "--write", path],
                               user=user, input=json.dumps(launch), timeout=30)
        if res.returncode != 0:
            workdir = path.rsplit("/.hpcgate/", 1)[0]
            raise SpawnException(
                launch_file_refusal(workdir, res.stderr), reason="launch-file",
                log_message=f"writing {path} as {user}: {res.stderr.strip()}")

    async def _follow(self, watcher: Any, runner: Any, user: str, log_file: str) -> tuple[str, int]:
        """Wait for the launcher's report, then for the route to it (login-node: the hub's
        forward), then for the server to answer through it, watching the job all
        along: the moment it ends, start() fails with the reason."""
        updates = watcher.subscribe(self.job_id)
        next_status = asyncio.ensure_future(updates.get())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(self.start_timeout - 5, 5)

        async def race(step: asyncio.Future[Any]) -> Any:
            nonlocal next_status
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    step.cancel()
                    raise SpawnException(
                        f"Your server did not start within {format_duration(self.start_timeout)}; "
                        f"the job was cancelled. Last state: "
                        f"{self._describe(watcher.latest(self.job_id))}.", reason="start-timeout")
                done, _ = await asyncio.wait({next_status, step}, timeout=remaining,
                                             return_when=asyncio.FIRST_COMPLETED)
                if next_status in done:
                    status = next_status.result()
                    next_status = asyncio.ensure_future(updates.get())
                    try:
                        await self._on_status(status, runner, user, log_file)
                    except BaseException:
                        step.cancel()
                        raise
                if step in done:
                    return step.result()

        try:
            host, port = await race(self._address)
            self.job_host, self.job_port = host, port
            spawn_phase(self, "server_boot")
            # The launcher reports once: a hub killed from here on (before start() returns and
            # JupyterHub stores the state) must find the address in the database, or it waits
            # start_timeout for a report that never comes and then ends a working server.
            self._save_state_now()
            host, port = await race(asyncio.ensure_future(self.connection.open(host, port)))
            prefix = self.get_env().get("JUPYTERHUB_SERVICE_PREFIX", "/")
            await race(asyncio.ensure_future(_answers(host, port, prefix)))
            spawn_phase(self, "route")
            return host, port
        finally:
            next_status.cancel()
            watcher.unsubscribe(self.job_id, updates)

    async def _on_status(self, status: JobStatus, runner: Any, user: str, log_file: str) -> None:
        if status.is_final:
            tail = await self._log_tail(runner, user, log_file)
            message = f"Your job ended before JupyterLab started: {self._describe(status)}"
            if status.exit_code not in (None, 0) and "exit code" not in message:
                message += f" (exit code {status.exit_code})"
            html = web.escape.xhtml_escape(message)
            if tail:
                message += f"\nLast lines of the job's output:\n{tail}"
                html += f"<pre>{web.escape.xhtml_escape(tail)}</pre>"
            raise SpawnException(message, reason=status.state.value.lower(), message_html=html)
        if status.reason_is_permanent:
            raise SpawnException(f"{status.reason_text}. The job was cancelled.",
                                 reason="never-starts")
        if status.state is JobState.RUNNING:
            spawn_phase(self, "queue_wait")
        progress = {JobState.RUNNING: 60}.get(status.state, 30)
        text = self._describe(status)
        if sessions.queue_words_need_nodes(status):  # the drain reason, not just "Resources"
            scheduler, _, _ = self._shared()
            text = await sessions.queue_text(scheduler, status, self.job_request)
        self._emit(progress, text)

    async def _log_tail(self, runner: Any, user: str, log_file: str, lines: int = 15) -> str:
        with contextlib.suppress(SchedulerError, OSError):
            res = await runner.run(["tail", "-n", str(lines), log_file], user=user, timeout=10)
            if res.returncode == 0:
                return res.stdout.strip()
        return ""

    async def address_reported(self, host: str, port: int) -> None:
        """Called by the hub API when this server's launcher reports (see gateway.hub.api)."""
        scheduler, _, watcher = self._shared()
        if not self.job_id:
            raise web.HTTPError(409, "this server has no job")
        status = watcher.latest(self.job_id)
        if status is None or not status.node:
            # The launcher can report before the watcher's next tick has seen the job start.
            watcher.track(self.job_id)
            with contextlib.suppress(asyncio.TimeoutError):
                status = await watcher.wait_for(self.job_id, lambda s: bool(s.node) or s.is_final,
                                                timeout=30)
        if status is None or not status.node or status.is_final:
            raise web.HTTPError(409, "the job of this server is not running")
        node_address = status.node_address
        if node_address is None and self.connection.checks_node_address:
            node_address = await scheduler.node_address(status.node)
        self.connection.check_report(host, port, node_address)
        address = getattr(self, "_address", None)
        if address is not None and not address.done():
            address.set_result((host, port))
        elif self.job_id:  # re-adopted after a hub restart: poll()/get_url() wait for this
            self.job_host, self.job_port = host, port
            self._save_state_now()
            self._readopted().set()

    def ending_reported(self, ending: str) -> None:
        """Called by the hub API when the launcher says its job is ending on its own."""
        self.log.info("%s is ending: %s", self._log_name, ending)
        self.ending = ending
        self._save_state_now()

    def _readopted(self) -> asyncio.Event:
        if not hasattr(self, "_readopt_event"):
            self._readopt_event = asyncio.Event()
        return self._readopt_event

    async def _cancel_quietly(self, scheduler: Any, user: str, job_id: str = "") -> None:
        job_id = job_id or self.job_id
        if not job_id:
            return
        try:
            await scheduler.cancel([job_id], user=user)
        except SchedulerError as err:
            self.log.warning("Could not cancel job %s of %s: %s", job_id, user, err)

    # -- poll / stop ------------------------------------------------------------------------------

    async def _find_submitted_job(self) -> bool | None:
        """A hub killed while sbatch ran saved no job id: find the job by its name and owner
        (the newest unfinished one). True when found (now this server's job), False when there
        is none, None when the scheduler cannot say."""
        scheduler, _, _ = self._shared()
        user, _ = await self.unix_account()
        try:
            jobs = await scheduler.list_jobs()
        except SchedulerError as err:
            self.log.warning("Cannot look for the job %s was submitting: %s", self._log_name, err)
            return None
        mine = [s for s in jobs.values() if not s.is_final and _name_and_owner(s) ==
                (self._job_name(), user)]
        if not mine:
            self.log.warning("%s was being submitted when the hub stopped; no job of it is "
                             "queued or running.", self._log_name)
            self.submitting = 0.0
            self._save_state_now()
            return False
        found = max(mine, key=lambda s: int(s.job_id) if s.job_id.isdigit() else 0)
        self.job_id, self.submitted_at, self.submitting = found.job_id, self.submitting, 0.0
        self._save_state_now()
        self.log.info("%s: found its job %s, submitted as the hub stopped", self._log_name,
                      self.job_id)
        return True

    async def poll(self) -> int | None:
        if not self.job_id and self.submitting and not getattr(self, "_spawn_pending", False):
            if await self._find_submitted_job() is None:
                return None  # the scheduler cannot say: never "gone"
        if not self.job_id:
            # A start the hub died in before sbatch may have left a tunnel key line. JupyterHub
            # stops a server poll() calls ended without calling stop(): release it here.
            if not getattr(self, "_spawn_pending", False):
                await self.connection.release()
            return 0
        try:
            _, _, watcher = self._shared()
        except SpawnException as err:  # no policy was ever readable: say so, never "gone"
            self.log.error("Cannot ask the scheduler about job %s of %s: %s", self.job_id,
                           self._log_name, err.log_message)
            return None
        if self._readoption_end is not None:
            return self._readoption_end  # JupyterHub's stop after a re-adoption that ended
        if watcher.latest(self.job_id) is None:
            watcher.track(self.job_id, starting=not self.job_port)
        if not self.job_port and self._check_pending and not self._stop_pending:
            return await self._readoption(watcher)
        status = watcher.latest(self.job_id)
        if status is None or not status.is_final:
            if (self.job_port and status is not None and status.state is JobState.RUNNING
                    and not await self.connection.is_alive()):
                # JupyterHub calls stop() only when poll() says "running": end the job here.
                scheduler, _, _ = self._shared()
                user, _ = await self.unix_account()
                await self._cancel_quietly(scheduler, user)
                await self.connection.release()
                # A server ending at its walltime closes its tunnel before the scheduler says
                # the job ended: the launcher's word decides how it ended.
                sessions.remember_end(self, status, stopped_here=False,
                                      fallback=("connection-lost", "Its connection to the hub was "
                                                "lost; the job was cancelled."))
                return 1
            if self.job_port:  # a hub restarted: learn of the job's end as it happens again
                self._watch_for_end(watcher)
            return None  # running, queued, or the scheduler cannot say: never "gone"
        await self.connection.release()
        sessions.remember_end(self, status, stopped_here=False)
        return status.exit_code if status.exit_code else (0 if status.state is JobState.COMPLETED
                                                          else 1)

    async def _readoption(self, watcher: Any) -> int | None:
        """JupyterHub's start-up check (app.init_spawners) of a server whose job was queued or
        starting when the hub stopped: answer "running" once the launcher reports, or end the
        server with its reason when the job ends, start_timeout passes, or a stop is asked for.

        Meanwhile the server is "pending check", and JupyterHub's stop handler cannot stop such
        a server itself: it cancels the server's `_spawn_future` (the start it interrupts), gives
        it a second, then stops the server and fails (500) if a check is still pending. So the
        check's wait stands as that future here: its cancel ends the check at once with the
        server stopped, the handler's stop that follows finds nothing left to do (202/204), and
        the job is cancelled by the spawner."""
        job_id = self.job_id
        interrupt: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._spawn_future = interrupt
        reported = asyncio.ensure_future(self._readopted().wait())
        ended = asyncio.ensure_future(watcher.wait_for(
            job_id, lambda s: s.is_final or s.reason_is_permanent, None))
        try:
            await asyncio.wait({interrupt, reported, ended}, timeout=self.start_timeout,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            reported.cancel()
            ended.cancel()
        if interrupt.cancelled():
            self.log.info("%s: stop asked for while its job %s waits to start; cancelling it",
                          self._log_name, job_id)
            sessions.remember_end(self, watcher.latest(job_id), stopped_here=True)
            # Not awaited: the stop handler's second must find the check over (scancel as the
            # user can take longer on a busy hub); the job's end is still waited for and logged.
            self._cancelling = asyncio.ensure_future(
                self._end_readopted_job(watcher, job_id, self.connection))
            return self._end_readoption(0, SpawnException(
                "You stopped this server while its job waited to start; the job was cancelled.",
                reason="stopped"))
        if self.job_port:
            self._spawn_future = None  # as JupyterHub leaves a start that succeeded
            watcher.settled(job_id)
            self._watch_for_end(watcher)
            return None
        status = ended.result() if ended.done() and not ended.cancelled() else None
        if status is not None and status.is_final:
            sessions.remember_end(self, status, stopped_here=False)
            await self.connection.release()
            words = f"Your job ended before JupyterLab started: {self._describe(status)}"
            self.log.warning("%s: %s", self._log_name, words)
            exit_code = status.exit_code or (0 if status.state is JobState.COMPLETED else 1)
            return self._end_readoption(exit_code, SpawnException(
                words, reason=status.state.value.lower()))
        if status is not None:  # a reason the job never starts for (a limit, a bad account)
            words = f"{status.reason_text}. The job was cancelled."
            fallback = ("never-starts", words)
        else:
            words = (f"Your server did not start within {format_duration(self.start_timeout)} "
                     "after the hub restarted; the job was cancelled.")
            fallback = ("start-timeout", words)
        self.log.warning("%s: %s", self._log_name, words)
        sessions.remember_end(self, watcher.latest(job_id), stopped_here=False, fallback=fallback)
        # In the background too: a stop asked for meanwhile must find the check over.
        self._cancelling = asyncio.ensure_future(
            self._end_readopted_job(watcher, job_id, self.connection))
        return self._end_readoption(1, SpawnException(words, reason=fallback[0]))

    def _end_readoption(self, exit_code: int, reason: SpawnException) -> int:
        """poll()'s answer from now on, and the start's failure where JupyterHub looks for it:
        its stop then keeps this spawner (the stop handler that follows a cancel needs it) and its
        pages show the sentence, as after any failed start."""
        self._readoption_end = exit_code
        failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        failed.set_exception(reason)
        self._spawn_future = failed
        self._save_state_now()
        return exit_code

    async def _end_readopted_job(self, watcher: Any, job_id: str,
                                 connection: ConnectionMode) -> None:
        """Cancel a re-adopted job that will not serve, release its tunnel key, and wait (up to
        stop_timeout) for the scheduler to record the end."""
        try:
            scheduler, _, _ = self._shared()
            user, _ = await self.unix_account()
            await self._cancel_quietly(scheduler, user, job_id)
        except SpawnException as err:
            self.log.error("Cannot cancel job %s of %s: %s", job_id, self._log_name,
                           err.log_message or err)
        await connection.release()
        watcher.poke()
        with contextlib.suppress(asyncio.TimeoutError):
            final = await watcher.wait_for(job_id, lambda s: s.is_final, self.stop_timeout)
            self.log.info("Job %s of %s ended: %s", job_id, self._log_name, final.state.value)
        watcher.untrack(job_id)

    async def get_url(self) -> str:
        """After a hub restart: where the job's server is reached now (poll() has waited for
        the launcher's report of a job that was still queued or starting)."""
        if self.job_port and self.server is not None:
            self.server.ip, self.server.port = await self.connection.readopt(self.job_host,
                                                                              self.job_port)
        return await super().get_url()

    async def stop(self, now: bool = False) -> None:
        task = getattr(self, "_end_watch", None)
        if task is not None:
            task.cancel()  # an end the hub asked for is not news
        if not self.job_id and self.submitting:
            await self._find_submitted_job()  # not to leave it running for nobody
        if not self.job_id:
            # A start the hub died in before sbatch may have left a tunnel key line.
            await self.connection.release()
            return
        scheduler, _, watcher = self._shared()
        user, _ = await self.unix_account()
        watcher.track(self.job_id)
        await self._cancel_quietly(scheduler, user)
        watcher.poke()
        await self.connection.release()
        if not now:
            with contextlib.suppress(asyncio.TimeoutError):
                await watcher.wait_for(self.job_id, lambda s: s.is_final, self.stop_timeout)
        final = watcher.latest(self.job_id)
        self.log.info("Job %s of %s ended: %s", self.job_id, user,
                      final.state.value if final else "unknown")
        sessions.remember_end(self, final, stopped_here=True)
        watcher.untrack(self.job_id)


async def _answers(host: str, port: int, prefix: str) -> None:
    """Return once the server answers HTTP. Its socket is bound before the launcher reports, so a
    request waits in the listen queue until JupyterLab serves it: no polling back-off."""
    import aiohttp

    url = f"http://{host}:{port}{prefix.rstrip('/')}/api"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        while True:
            try:
                async with session.get(url) as resp:
                    await resp.read()
                    return
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                await asyncio.sleep(0.1)


def _unix_groups(user: str) -> list[str]:
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return []
    return [grp.getgrgid(g).gr_name for g in os.getgrouplist(user, entry.pw_gid)]


# How a full disk or an exhausted quota shows in the writer's traceback (ENOSPC, EDQUOT).
_FULL = re.compile(r"No space left on device|Disk quota exceeded|Errno (28|122)\b")


def launch_file_refusal(workdir: str, stderr: str) -> str:
    """The user's sentence for a launch file that could not be written in `workdir`."""
    if _FULL.search(stderr):
        return (f"Your working directory {workdir} is full (no space left, or your quota is "
                "used up), so your server's files could not be written there. Free some space "
                "there, then start your server again.")
    return f"Your server's files could not be prepared in your working directory {workdir}."


def _name_and_owner(status: JobStatus) -> tuple[str, str]:
    """A listed job's (name, owner) from the scheduler's record (Slurm's JSON, PBS's qstat)."""
    raw = status.raw if isinstance(status.raw, dict) else {}
    if "Job_Name" in raw:  # PBS: the owner is user@submit-host
        return str(raw.get("Job_Name", "")), str(raw.get("Job_Owner", "")).split("@", 1)[0]
    return str(raw.get("name", "")), str(raw.get("user_name", ""))


def _host_of(url: str) -> str:
    from urllib.parse import urlparse

    return urlparse(url).hostname or "127.0.0.1"
