"""Runners execute an argv: here, as another user through sudo, or on a login node over SSH.

The thin command layer, apart from the scheduler semantics: a runner knows nothing of Slurm or
PBS. The environment a command needs (SLURM_CONF, PATH) is always passed explicitly: sudo and
sshd both drop the caller's environment.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from schedulers.errors import SchedulerUnavailable
from schedulers.model import SAFE_ENV_NAME, check_name

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"
# The hub's commands (sudo, sbatch, squeue, the launcher writing a launch file) run this much
# nicer than the hub: when a workshop starts hundreds of servers at once, their processes would otherwise hold
# the hub's own event loop off the CPU and every page and API call would wait
# (benchmarks.spawn_storm). A command still gets the CPU whenever the hub does not need it.
COMMAND_NICE = 5


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str


class Runner(Protocol):
    timeout: float
    """Seconds one command may take before it counts as a failure (the policy's command_timeout)."""

    async def run(self, argv: Sequence[str], *, user: str | None = None, input: str | None = None,
                  timeout: float | None = None) -> CommandResult:
        """Run argv (as `user` when given) and return what it printed."""
        ...

    async def close(self) -> None: ...


def _env_args(env: Mapping[str, str]) -> list[str]:
    for name, value in env.items():
        if not SAFE_ENV_NAME.match(name) or any(c in value for c in "\0\n"):
            raise ValueError(f"environment entry {name!r} is not safe to pass")
    return [f"{k}={v}" for k, v in env.items()]


def _missing(command: str, path: str, user: str | None = None) -> str:
    """The sentence for a command that is not there, naming where it was looked for."""
    where = f"for {user}" if user else "on the hub host"
    if "/" in command:
        return f"The command `{command}` does not exist {where}."
    return (f"The command `{command}` is not in the scheduler's PATH {where} ({path}): set "
            "cluster.command_path in the site policy to include the directory that holds it.")


# What `env` prints when it cannot find (127) or may not run (126) the command it was given.
_ENV_FAILED = re.compile(
    r"^env: ['\"‘]?(?P<cmd>.+?)['\"’]?: (?P<why>No such file or directory|Permission denied)$")


def check_found(result: CommandResult, argv: Sequence[str], path: str, user: str | None) -> CommandResult:
    """`result`, unless `env` could not run argv[0] at all (sudo and ssh run commands through it).

    That is the site's PATH or file modes, not the scheduler's answer: a refused-job sentence such
    as "PBS refused the job: env: 'qsub': No such file or directory" would mislead. Only bare
    names: callers that run an absolute path (the job's python) word its absence themselves.
    """
    if result.returncode not in (126, 127) or "/" in argv[0]:
        return result
    for line in result.stderr.splitlines():
        match = _ENV_FAILED.match(line.strip())
        if match is None or match.group("cmd") != argv[0]:
            continue
        if match.group("why") == "Permission denied":
            raise SchedulerUnavailable(
                f"The command `{argv[0]}` is in the scheduler's PATH ({path}), but {user or 'the hub'} "
                "may not run it: check the modes of the file and its directories.", result.stderr)
        raise SchedulerUnavailable(_missing(argv[0], path, user), result.stderr)
    return result


async def _communicate(proc: asyncio.subprocess.Process, input: str | None, timeout: float,
                       argv: Sequence[str]) -> CommandResult:
    try:
        out, err = await asyncio.wait_for(
            proc.communicate(input.encode() if input is not None else None), timeout)
    except asyncio.TimeoutError as exc:
        proc.kill()
        await proc.wait()
        raise SchedulerUnavailable(
            f"`{argv[0]}` did not answer within {timeout:.0f} s; the scheduler may be overloaded.",
            "") from exc
    return CommandResult(proc.returncode or 0, out.decode(errors="replace"),
                         err.decode(errors="replace"))


def _lower_priority(pid: int) -> None:
    """The hub's nice value + COMMAND_NICE for a command just started. Set from outside rather
    than through `nice` or a preexec function (which would cost an exec or the vfork), right after
    the exec: sudo takes milliseconds before it forks the command, which inherits the value."""
    try:
        os.setpriority(os.PRIO_PROCESS, pid, min(19, os.getpriority(os.PRIO_PROCESS, 0) + COMMAND_NICE))
    except OSError:  # gone already, or not ours to change: it only runs at the hub's priority
        pass


class LocalRunner:
    """Runs commands as the hub's own user (with `user`, through sudo: see SudoRunner)."""

    def __init__(self, env: Mapping[str, str] | None = None, timeout: float = 30):
        self.env = {"PATH": DEFAULT_PATH, **(env or {})}
        _env_args(self.env)
        self.timeout = timeout

    async def run(self, argv: Sequence[str], *, user: str | None = None, input: str | None = None,
                  timeout: float | None = None) -> CommandResult:
        if user is not None:
            raise ValueError("LocalRunner runs as the hub's user only; use SudoRunner for users")
        return await self._exec(list(argv), input, timeout or self.timeout, self.env)

    async def _exec(self, argv: list[str], input: str | None, timeout: float,
                    env: Mapping[str, str]) -> CommandResult:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env=dict(env), cwd="/")
        except FileNotFoundError as err:
            raise SchedulerUnavailable(_missing(argv[0], env.get("PATH", "")), str(err)) from err
        _lower_priority(proc.pid)
        return await _communicate(proc, input, timeout, argv)

    async def close(self) -> None:
        return None


class SudoRunner(LocalRunner):
    """Runs commands as the job's user: `sudo -n -u USER env K=V ... argv`.

    `-n` makes a missing sudoers rule fail at once instead of waiting for a password. Without
    `user`, commands run as the hub's user (the watcher's batched query needs no identity).
    """

    async def run(self, argv: Sequence[str], *, user: str | None = None, input: str | None = None,
                  timeout: float | None = None) -> CommandResult:
        if user is None or user == _current_user():
            return await self._exec(list(argv), input, timeout or self.timeout, self.env)
        check_name("user name", user)
        # sudo looks the command up in the PATH given to `env`: the policy's command_path.
        full = ["sudo", "-n", "-u", user, "env", *_env_args(self.env), *argv]
        result = await self._exec(full, input, timeout or self.timeout, {"PATH": DEFAULT_PATH})
        return check_found(result, argv, self.env["PATH"], user)


def _current_user() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


class SSHRunner:
    """Runs commands on a login node over SSH, one reused connection per remote user.

    The remote side is a shell, so argv is joined with shlex quoting: every element arrives as
    one literal word. With `key_for_user`, a user's commands log in as that user with the key it
    names; without it they log in as `service_user` and go through sudo on the login node. The
    hub's own queries (no user) always log in as `service_user`.
    """

    def __init__(self, host: str, port: int = 22, known_hosts: str | None = None,
                 key_for_user: Callable[[str], str] | None = None,
                 env: Mapping[str, str] | None = None, connect_timeout: float = 10,
                 service_user: str | None = None, timeout: float = 30):
        self.host, self.port, self.known_hosts = host, port, known_hosts
        self.key_for_user = key_for_user
        self.env = dict(env or {})
        _env_args(self.env)
        self.connect_timeout = connect_timeout
        self.service_user = service_user
        self.timeout = timeout
        self._connections: dict[str, object] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def _connection(self, login: str):  # -> asyncssh.SSHClientConnection
        import asyncssh

        conn = self._connections.get(login)
        if conn is not None and not conn.is_closed():  # type: ignore[attr-defined]
            return conn
        lock = self._locks.setdefault(login, asyncio.Lock())
        async with lock:
            conn = self._connections.get(login)
            if conn is not None and not conn.is_closed():  # type: ignore[attr-defined]
                return conn
            keys = [self.key_for_user(login)] if self.key_for_user else None
            try:
                conn = await asyncio.wait_for(asyncssh.connect(
                    self.host, self.port, username=login, client_keys=keys,
                    known_hosts=self.known_hosts, agent_path=None, keepalive_interval=30,
                    # aes128-gcm was the fastest cipher measured here for OpenSSH peers.
                    encryption_algs=["aes128-gcm@openssh.com", "chacha20-poly1305@openssh.com",
                                     "aes256-gcm@openssh.com", "aes128-ctr"]),
                    self.connect_timeout)
            except (OSError, asyncssh.Error, asyncio.TimeoutError) as err:
                raise SchedulerUnavailable(
                    f"The login node {self.host}:{self.port} cannot be reached over SSH.",
                    str(err)) from err
            self._connections[login] = conn
            return conn

    async def run(self, argv: Sequence[str], *, user: str | None = None, input: str | None = None,
                  timeout: float | None = None) -> CommandResult:
        import asyncssh

        timeout = timeout or self.timeout
        if user is not None:
            check_name("user name", user)
        if user is None or user == self.service_user:  # the hub's own queries
            if not self.service_user:
                raise SchedulerUnavailable(
                    "The scheduler's SSH transport has no service account for queries: set "
                    "cluster.ssh.service_user in the site policy.", "")
            login, prefix = self.service_user, []
        elif self.key_for_user is not None:  # the user's own key: the login node sees the user
            login, prefix = user, []
        elif self.service_user:  # one account for all, sudo on the login node
            login, prefix = self.service_user, ["sudo", "-n", "-u", user]
        else:
            raise SchedulerUnavailable(
                f"The scheduler's SSH transport cannot act as {user}: set cluster.ssh.key_template "
                "or service_user in the site policy.", "")
        command = shlex.join([*prefix, "env", *_env_args(self.env), *argv])
        conn = await self._connection(login)
        try:
            result = await asyncio.wait_for(
                conn.run(command, input=input, check=False),  # type: ignore[attr-defined]
                timeout)
        except asyncio.TimeoutError as err:
            raise SchedulerUnavailable(
                f"`{argv[0]}` on {self.host} did not answer within {timeout:.0f} s.", "") from err
        except (OSError, asyncssh.Error) as err:
            self._connections.pop(login, None)
            raise SchedulerUnavailable(f"The SSH connection to {self.host} failed.", str(err)) from err
        rc = result.exit_status if result.exit_status is not None else 255
        return check_found(CommandResult(rc, str(result.stdout or ""), str(result.stderr or "")), argv,
                           self.env.get("PATH", "the login node's default"), user or login)

    async def close(self) -> None:
        for conn in self._connections.values():
            conn.close()  # type: ignore[attr-defined]
        self._connections.clear()
