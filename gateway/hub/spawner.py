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
import sys
from datetime import timedelta
from typing import Any

from jupyterhub.spawner import Spawner, SpawnException
from tornado import web
from traitlets import Float, Instance, Int, List, Unicode, default

from gateway.depots.links import spawner_launch_entry
from gateway.hub import api as hubapi
from gateway.hub import handlers_installed
from gateway.hub.connections import ConnectionModes
from gateway.hub.scheduling import SchedulerConfig, shared
from gateway.policy.model import DIRECTIVE_PREFIX
from schedulers.errors import SchedulerError, SchedulerUnavailable, SubmitError
from schedulers.model import JobRequest, JobState, JobStatus, UnsafeValue, format_duration

_SERVER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_WALLTIME = re.compile(r"^(?:(\d{1,3})-)?(\d{1,3}):(\d{2})(?::(\d{2}))?$")


def parse_walltime(text: str) -> timedelta:
    """`D-HH:MM:SS`, `HH:MM:SS` or `HH:MM`; anything else is a clear ValueError."""
    m = _WALLTIME.match(text.strip())
    if not m:
        raise ValueError(f"Walltime must look like 2:00:00 or 1-12:00:00; you entered {text!r}.")
    days, hours, minutes, seconds = (int(g) if g else 0 for g in m.groups())
    return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)


class BatchSpawner(ConnectionModes, Spawner):
    """JupyterLab in a Slurm job on a compute node, started and watched by the hub."""

    scheduler_config = Instance(SchedulerConfig, help="The hub's scheduler connection.")

    @default("scheduler_config")
    def _default_scheduler_config(self) -> SchedulerConfig:
        config = SchedulerConfig(parent=self)
        try:
            policy = self.site_policy()
        except ValueError as err:  # PolicyFileError: spawns say so; poll() and stop() still work
            self.log.error("Site policy %s cannot be loaded; scheduler settings from the hub's "
                           "configuration: %s", self.policy_file, err)
            policy = None
        if policy is not None:
            config.apply_cluster(policy.cluster)
        return config

    job_python = Unicode(
        sys.executable,
        help="Python that runs the launcher inside the job: it must have hpcgate and JupyterLab, "
             "and be readable and executable by every user on every node.",
    ).tag(config=True)
    partition = Unicode("", help="Default partition (empty: the scheduler's default).").tag(
        config=True)
    account = Unicode("", help="Default account to charge (empty: the user's default).").tag(
        config=True)
    cpus = Int(1, help="Default cores for the server.").tag(config=True)
    memory_mb = Int(2048, help="Default memory in MB.").tag(config=True)
    walltime = Unicode("1:00:00", help="Default walltime (HH:MM:SS or D-HH:MM:SS).").tag(config=True)
    node = Unicode("", help="Pin servers to one node (tests, special sites).").tag(config=True)
    allowed_nodes = List(
        Unicode(), [], help="Nodes a user may pick with the `node` option (empty: none).",
    ).tag(config=True)
    job_prologue = Unicode(
        "", help="Site-written shell lines run in the job before the launcher, such as "
                 "`module load python`. Never built from user input.",
    ).tag(config=True)
    policy_file = Unicode(
        "", help="Site policy (YAML, see site_configs/): when set, the spawn form, the limits "
                 "and the job's environment come from it, and every user option is validated "
                 "against the user's groups. Without it, the defaults above apply.",
    ).tag(config=True)
    state_dir_template = Unicode(
        "{home}/.hpcgate/servers/{server}",
        help="Per-server directory on the shared filesystem: launch file and job log.",
    ).tag(config=True)
    report_timeout = Float(
        600, help="How long the launcher keeps trying to reach the hub (hub restarts included).",
    ).tag(config=True)
    stop_timeout = Float(60, help="Seconds stop() waits for the job's final state.").tag(config=True)

    @default("start_timeout")
    def _default_start_timeout(self) -> int:
        return 600  # queued jobs wait; the user sees why in the progress messages

    @default("http_timeout")
    def _default_http_timeout(self) -> int:
        return 120

    # -- state ------------------------------------------------------------------------------------

    job_id: str = ""
    job_host: str = ""
    job_port: int = 0
    token_digest: str = ""
    connect_mode: str = "direct"
    tunnel_port: int = 0
    tunnel_tag: str = ""
    tunnel_keys_file: str = ""

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self.job_id = state.get("job_id", "")
        self.job_host = state.get("host", "")
        self.job_port = state.get("port", 0)
        self.token_digest = state.get("token_digest", "")
        self.connect_mode = state.get("connect", "direct")
        self.tunnel_port = state.get("tunnel_port", 0)
        self.tunnel_tag = state.get("tunnel_tag", "")
        self.tunnel_keys_file = state.get("tunnel_keys_file", "")
        # login-node: the hub's forward is made again by poll()/get_url(); its port stays P.
        if self.connect_mode in ("reverse", "login-node"):
            from gateway.tunnel import hubside

            hubside.claim(self.tunnel_port)

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        if self.job_id:
            state.update(job_id=self.job_id, host=self.job_host, port=self.job_port,
                         connect=self.connect_mode, token_digest=self.token_digest)
            if self.connect_mode == "login-node":
                state.update(tunnel_port=self.tunnel_port)
        if self.tunnel_tag:  # from before the job exists: whose line in authorized_keys it is
            state.update(connect=self.connect_mode, tunnel_port=self.tunnel_port,
                         tunnel_tag=self.tunnel_tag, tunnel_keys_file=self.tunnel_keys_file)
        return state

    def clear_state(self) -> None:
        super().clear_state()
        self.job_id, self.job_host, self.job_port, self.token_digest = "", "", 0, ""
        self.connect_mode, self.tunnel_port, self.tunnel_tag = "direct", 0, ""
        self.tunnel_keys_file = ""

    def _save_state_now(self) -> None:
        # JupyterHub stores state only once start() returns; a hub that dies while the job is
        # queued must still find it on restart.
        if self.orm_spawner is not None and self.db is not None:
            self.orm_spawner.state = self.get_state()
            self.db.commit()

    # -- helpers ----------------------------------------------------------------------------------

    def _shared(self):
        return shared(self.scheduler_config)

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
        """The site policy, or None without policy_file (also read by the /hub/depots page)."""
        if not self.policy_file:
            return None
        if getattr(self, "_policy_config", None) is None:
            from gateway.policy.config import SitePolicyConfig

            self._policy_config = SitePolicyConfig(parent=self, policy_file=self.policy_file)
        return self._policy_config.policy()

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
        if policy is None:
            return await super().get_options_form()
        from gateway.policy import render_form

        user, _ = await self.unix_account()
        return render_form(policy, await self.user_groups(user), previous=self.user_options)

    def options_from_form(self, form_data: dict[str, list[str]]) -> dict[str, Any]:
        if not self.policy_file:
            return super().options_from_form(form_data)
        from gateway.policy import options_from_form

        return options_from_form(form_data)

    async def _request_fields(self, user: str) -> dict[str, Any]:
        """Partition, account, cores, memory, GPUs and walltime the user may have, validated."""
        opts = self.user_options or {}
        policy = self.site_policy()
        if policy is not None:
            from gateway.policy import PolicyError, check_server_count, validate_options

            groups = await self.user_groups(user)
            running = sum(1 for s in self.user.spawners.values() if s is not self and s.active)
            try:
                check_server_count(policy, groups, running)
                return validate_options(policy, groups, opts).job_request_fields()
            except PolicyError as err:
                raise SpawnException(err.message, reason="policy") from err
        try:
            walltime = parse_walltime(str(opts.get("walltime") or self.walltime))
        except ValueError as err:
            raise SpawnException(str(err), reason="bad-options") from err
        fields = {"partition": opts.get("partition") or self.partition or None,
                  "account": opts.get("account") or self.account or None,
                  "cpus": self.cpus, "memory_mb": self.memory_mb, "walltime": walltime,
                  "node": self.node or None}
        if opts.get("node"):
            if opts["node"] not in self.allowed_nodes:
                raise SpawnException(f"Node {opts['node']!r} cannot be chosen here.",
                                     reason="bad-options")
            fields["node"] = opts["node"]
        for key in ("cpus", "memory_mb"):
            if key in opts:
                try:
                    fields[key] = int(opts[key])
                except (TypeError, ValueError) as err:
                    raise SpawnException(f"{key} must be a whole number; you entered {opts[key]!r}.",
                                         reason="bad-options") from err
        return fields

    def _job_environment(self) -> tuple[str, str, dict[str, str], tuple[str, ...]]:
        """(python, prologue, environment, extra directives) for the job: the policy's, else the
        spawner's own settings. The scheduler's environment (SLURM_CONF) always reaches the job."""
        policy = self.site_policy()
        if policy is not None:
            job = policy.job
            env = {**policy.cluster.environment, **job.environment, "PATH": job.path}
            # The policy writes whole header lines; the builder adds its own "#SBATCH "/"#PBS ".
            prefix = DIRECTIVE_PREFIX[policy.cluster.scheduler]
            directives = tuple(d.removeprefix(prefix).strip() for d in job.extra_directives
                               if d.startswith(prefix))
            return job.python, job.prologue, {**self.scheduler_config.environment, **env}, directives
        env = {"PATH": f"{_bin_dir(self.job_python)}:/usr/local/bin:/usr/bin:/bin",
               **self.scheduler_config.environment}
        return self.job_python, self.job_prologue, env, ()

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
            await self._release_tunnel()
            raise

    async def _start_job(self) -> tuple[str, int]:
        if not handlers_installed():
            raise SpawnException(
                "This hub is not fully configured for hpcgate; please tell an administrator.",
                reason="hub-config", log_message="jupyterhub_config.py must call "
                "gateway.hub.install_handlers(): without its report API no launcher can say "
                "where its server listens")
        scheduler, runner, watcher = self._shared()
        self._events = []
        self._events_changed = asyncio.Event()
        self._emit(5, "Preparing your job")
        user, home = await self.unix_account()
        fields = await self._request_fields(user)
        python, prologue, job_env, directives = self._job_environment()
        if self.name and not _SERVER_NAME.match(self.name):
            raise SpawnException(f"Server name {self.name!r} is not allowed.", reason="bad-options")
        server_dir = self.state_dir_template.format(home=home, server=self.name or "default")
        launch_file = f"{server_dir}/launch.json"
        log_file = f"{server_dir}/job.log"

        env = self.get_env()
        self.token_digest = hubapi.token_digest(self.api_token)
        node_addresses = {}
        if fields["node"]:
            address = await scheduler.node_address(fields["node"])
            if address:
                node_addresses[fields["node"]] = address
        launch = {"env": env, "home": home, "args": self.get_args(),
                  "hub_host": _host_of(env.get("JUPYTERHUB_API_URL", "")),
                  "node_addresses": await self._node_addresses(scheduler, node_addresses),
                  "report_timeout": self.report_timeout}
        # The depots the user's groups allow, linked in depots/ by the launcher (none: no policy).
        launch["depots"] = await spawner_launch_entry(self, user, home)
        mode, tunnel_settings = self._connection()
        self.connect_mode = mode
        if mode == "login-node":  # the launcher binds and reports as in direct mode
            await self._prepare_login_node(tunnel_settings)
        elif tunnel_settings is not None:
            launch["tunnel"] = await self._prepare_tunnel(tunnel_settings)
        await self._write_launch_file(runner, python, user, launch_file, launch)

        body = [prologue.strip(), f"exec {shlex.quote(python)} -m gateway.job.launcher "
                f"{shlex.quote(launch_file)}"]
        try:
            req = JobRequest(script="\n".join(b for b in body if b) + "\n", name=self._job_name(),
                             workdir=home, output=log_file, environment=job_env,
                             extra_directives=directives, **fields)
        except UnsafeValue as err:
            raise SpawnException(str(err), reason="bad-options") from err

        self._address: asyncio.Future[tuple[str, int]] = asyncio.get_running_loop().create_future()
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
        self._save_state_now()
        self._emit(10, f"Submitted job {self.job_id}")
        watcher.track(self.job_id)
        try:
            host, port = await self._follow(watcher, runner, user, log_file)
        except BaseException:
            await self._cancel_quietly(scheduler, user)
            raise
        watcher.settled(self.job_id)
        self._emit(95, f"JupyterLab is listening on {watcher.latest(self.job_id).node}")
        return host, port

    async def _node_addresses(self, scheduler: Any, known: dict[str, str]) -> dict[str, str]:
        # All nodes' addresses, so the launcher binds the address the hub will route to.
        nodes = getattr(scheduler, "_node_addresses_cached", None)
        if nodes is not None:
            with contextlib.suppress(SchedulerError):
                return {**await nodes(), **known}
        return known

    async def _write_launch_file(self, runner: Any, python: str, user: str, path: str,
                                 launch: dict[str, Any]) -> None:
        res = await runner.run([python, "-m", "gateway.job.launcher", "--write", path],
                               user=user, input=json.dumps(launch), timeout=30)
        if res.returncode != 0:
            raise SpawnException(
                "Your server's files could not be prepared in your home directory.",
                reason="launch-file", log_message=f"writing {path} as {user}: {res.stderr.strip()}")

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
            host, port = await race(asyncio.ensure_future(self._open_route(host, port)))
            prefix = self.get_env().get("JUPYTERHUB_SERVICE_PREFIX", "/")
            await race(asyncio.ensure_future(_answers(host, port, prefix)))
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
        progress = {JobState.RUNNING: 60}.get(status.state, 30)
        self._emit(progress, self._describe(status))

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
        if self.connect_mode == "reverse":
            # The report came through the job's own tunnel (its key may open nothing else), and
            # the address is the tunnel's hub-side end, chosen by the hub: nothing else is accepted.
            if not self.tunnel_port or (host, port) != ("127.0.0.1", self.tunnel_port):
                raise web.HTTPError(403, "in reverse mode the server must report its tunnel's end "
                                         f"127.0.0.1:{self.tunnel_port}")
        else:
            node_address = status.node_address or await scheduler.node_address(status.node)
            # The proxy will route this user's URL there: only the job's own node is acceptable.
            if not node_address or not hubapi.same_host(host, node_address):
                raise web.HTTPError(403,
                                    f"the server must listen on its node's address {node_address}")
        address = getattr(self, "_address", None)
        if address is not None and not address.done():
            address.set_result((host, port))
        elif self.job_id:  # re-adopted after a hub restart: poll()/get_url() wait for this
            self.job_host, self.job_port = host, port
            self._save_state_now()
            self._readopted().set()

    def _readopted(self) -> asyncio.Event:
        if not hasattr(self, "_readopt_event"):
            self._readopt_event = asyncio.Event()
        return self._readopt_event

    async def _cancel_quietly(self, scheduler: Any, user: str) -> None:
        if not self.job_id:
            return
        try:
            await scheduler.cancel([self.job_id], user=user)
        except SchedulerError as err:
            self.log.warning("Could not cancel job %s of %s: %s", self.job_id, user, err)

    # -- poll / stop ------------------------------------------------------------------------------

    async def poll(self) -> int | None:
        if not self.job_id:
            return 0
        _, _, watcher = self._shared()
        if watcher.latest(self.job_id) is None:
            watcher.track(self.job_id, starting=not self.job_port)
        status = watcher.latest(self.job_id)
        if status is None or not status.is_final:
            if self.connect_mode == "login-node" and self.job_port:
                with contextlib.suppress(SpawnException):  # made again after a hub restart
                    self._forward().start()
            if (self.connect_mode in ("reverse", "login-node") and self.job_port
                    and status is not None
                    and status.state is JobState.RUNNING and await self._tunnel_stayed_down()):
                # JupyterHub calls stop() only when poll() says "running": end the job here.
                scheduler, _, _ = self._shared()
                user, _ = await self.unix_account()
                await self._cancel_quietly(scheduler, user)
                await self._release_tunnel()
                return 1
            return None  # running, queued, or the scheduler cannot say: never "gone"
        await self._release_tunnel()
        return status.exit_code if status.exit_code else (0 if status.state is JobState.COMPLETED
                                                          else 1)

    async def get_url(self) -> str:
        """After a hub restart, a job that was still starting reports its address here."""
        if self.job_id and not self.job_port:
            _, _, watcher = self._shared()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._readopted().wait(), self.start_timeout)
            if self.job_port and self.server is not None:
                self.server.ip, self.server.port = self.job_host, self.job_port
                watcher.settled(self.job_id)
        if self.connect_mode == "login-node" and self.job_port:
            await self._readopt_forward()
        return await super().get_url()

    async def stop(self, now: bool = False) -> None:
        if not self.job_id:
            return
        scheduler, _, watcher = self._shared()
        user, _ = await self.unix_account()
        watcher.track(self.job_id)
        try:
            await scheduler.cancel([self.job_id], user=user)
        except SchedulerError as err:
            self.log.warning("Cancelling job %s failed: %s", self.job_id, err)
        watcher.poke()
        await self._release_tunnel()
        if not now:
            with contextlib.suppress(asyncio.TimeoutError):
                await watcher.wait_for(self.job_id, lambda s: s.is_final, self.stop_timeout)
        final = watcher.latest(self.job_id)
        self.log.info("Job %s of %s ended: %s", self.job_id, user,
                      final.state.value if final else "unknown")
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


def _host_of(url: str) -> str:
    from urllib.parse import urlparse

    return urlparse(url).hostname or "127.0.0.1"


def _bin_dir(python: str) -> str:
    from pathlib import Path

    return str(Path(python).parent)
