"""One supervised OpenSSH client, restarted with back-off: the job's reverse tunnel and the hub's
login-node forwards both run through this.

`SshSupervisor` is asyncio: the hub runs it on its own event loop; the job's launcher, which is
synchronous, runs it on a loop in a thread of its own (`gateway.tunnel.client.TunnelSupervisor`).
`up` is set only while ssh has printed that every expected forward listens (after
authentication), read by the same `ForwardWatch` on both sides.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable

from gateway.tunnel.sshargs import Backoff, ForwardWatch

Log = Callable[[str], None]


class SshSupervisor:
    """Keep one ssh process running; `up` is set while all its forwards are confirmed."""

    def __init__(self, argv: list[str], expect: set[tuple[str, int]], log: Log,
                 backoff: Backoff | None = None, *, error: type[Exception] = RuntimeError,
                 what: str = "the SSH tunnel", preexec: Callable[[], None] | None = None):
        self.argv = argv
        self.expect = expect
        """{("remote-ok", P), ("local-ok", L)}: the forwards ssh must report before `up`."""
        self.log = log
        self.backoff = backoff or Backoff()
        self.error, self.what, self.preexec = error, what, preexec
        self.up = asyncio.Event()
        self.proc: asyncio.subprocess.Process | None = None
        self.attempts = 0
        self.connects = 0
        self.tail: collections.deque[str] = collections.deque(maxlen=12)
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> SshSupervisor:
        if not self.running:
            self._stopping = False
            self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def wait_ready(self, timeout: float, give_up_after: int = 4) -> None:
        """Return once the forwards are confirmed; `error` after `timeout` seconds, or after
        `give_up_after` attempts that never came up (refused key, unknown host key...)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.up.is_set():
            failed = self.connects == 0 and self.attempts >= give_up_after and not self._alive()
            if loop.time() > deadline or failed or not self.running:
                said = " | ".join(self.tail) or "nothing"
                raise self.error(f"{self.what} could not be opened after {self.attempts} "
                                 f"attempts; ssh said: {said}")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.up.wait(), 0.05)

    async def stop(self) -> None:
        """End the supervision and the ssh process (terminate, then kill after 5 s)."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._end_process()
        self.up.clear()

    def _alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def _end_process(self) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while not self._stopping:
                self.attempts += 1
                started = loop.time()
                was_up = await self._run_once()
                self.up.clear()
                if self._stopping:
                    return
                delay = self.backoff.after_exit(was_up, loop.time() - started)
                code = self.proc.returncode if self.proc else "?"
                self.log(f"ssh exited ({code}); reconnecting in {delay:.1f} s")
                await asyncio.sleep(delay)
        finally:
            await asyncio.shield(self._end_process())

    def _up_line(self, pid: int) -> str:
        return f"up (connection {self.connects}, ssh pid {pid})"

    async def _run_once(self) -> bool:
        """Run one ssh until it exits; True if its forwards were ever all up."""
        watch = ForwardWatch(self.expect)
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE, preexec_fn=self.preexec)
        except OSError as err:
            self.tail.append(f"cannot run ssh: {err}")
            self.log(self.tail[-1])
            return False
        self.proc = proc
        assert proc.stderr is not None
        async for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            seen = watch.feed(line)
            if seen == "up":
                self.connects += 1
                self.up.set()
                self.log(self._up_line(proc.pid))
            elif seen == "said":
                self.tail.append(line)
                self.log(line)
        await proc.wait()
        return watch.up
