"""Executions and kernel events, from the messages between the server and its kernels.

Two taps, joined by the request's msg_id:
- the kernel's IOPub: status busy/idle, execute_input, error and the outputs' sizes, once per
  kernel whatever the number of clients, and also for clients that talk to the kernel's ports
  directly (IOPub is a broadcast: every subscriber gets every message). Read from one source at a
  time: while a websocket is connected to the kernel, what jupyter_server forwards to one of them
  (`KernelWatch.source`); otherwise a SUB socket of our own (`kernel.connect_iopub()`). A SUB
  socket of our own beside the websocket's made the kernel publish every message twice, and cost
  0.3 ms per execution; the handovers overlap, and messages seen twice are dropped by their id;
- the shell channel of each kernel websocket (`connection.RecordingConnection`): the request as
  the server received it (its time, `metadata.cellId`, the code) and the reply's status.
Nothing here sits in a message's path: each tap reads after jupyter_server has forwarded it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable
from typing import Any

from gateway.job.activity.records import Origin, iso, keep_code, parse_iso

log = logging.getLogger("hpcgate.activity")
DELIM = b"<IDS|MSG>"
OUTPUTS = {b"stream", b"display_data", b"execute_result", b"update_display_data", b"error"}
_WATCHED = OUTPUTS | {b"status", b"execute_input"}
_MSG_TYPE = re.compile(rb'"msg_type"\s*:\s*"([a-z_]+)"')
_MSG_ID = re.compile(rb'"msg_id"\s*:\s*"([^"\\]{1,255})"')
_COUNT = re.compile(rb'"execution_count"\s*:\s*(\d{1,18})\b')
SEEN_IOPUB = 512  # IOPub message ids remembered, to read each once across a change of source
REPLY_GRACE = 2.0  # s to wait for the later of reply and idle before closing a record without it
MAX_PENDING = 10_000  # requests a kernel never answered (kept until it dies, restarts or stops)
Writer = Callable[[dict[str, Any]], None]


def _text(value: Any, limit: int = 255) -> str | None:
    return value[:limit] if isinstance(value, str) and value else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class Execution:
    __slots__ = ("msg_id", "requested", "started", "idle", "replied", "status", "ename",
                 "count", "cell_id", "client", "code", "code_bytes", "output_bytes",
                 "interrupted", "timer")

    def __init__(self, msg_id: str, requested: float, client: str):
        self.msg_id, self.requested, self.client = msg_id, requested, client
        self.started: float | None = None
        self.idle: float | None = None
        self.replied: float | None = None
        self.status: str | None = None
        self.ename: str | None = None
        self.count: int | None = None
        self.cell_id: str | None = None
        self.code: str | None = None
        self.code_bytes = 0
        self.output_bytes = 0
        self.interrupted = False
        self.timer: asyncio.TimerHandle | None = None

    def outcome(self) -> str:
        if self.replied is not None:
            return {"ok": "ok", "error": "error", "abort": "aborted"}.get(self.status or "", "aborted")
        if self.idle is not None:  # no reply seen (a direct client, or the websocket closed)
            return "error" if self.ename else "ok"
        return "unfinished"


class KernelWatch:
    """One kernel's executions in flight."""

    def __init__(self, recorder: Recorder, kernel_id: str, kernel_name: str, language: str):
        self.recorder, self.kernel_id = recorder, kernel_id
        self.kernel_name, self.language = kernel_name, language
        self.pending: dict[str, Execution] = {}
        self.stream: Any = None  # our SUB socket on the kernel's IOPub
        self.unlisten: Callable[[], Any] = lambda: None
        self.heard = False  # a message arrived on `stream`
        self.source: Any = None  # the websocket connection whose IOPub we read; None: `stream`
        self.seen: dict[bytes, None] = {}  # the last IOPub message ids read, oldest first
        self.died = False

    def fields(self) -> dict[str, Any]:
        return {"kernel_id": self.kernel_id, "kernel_name": self.kernel_name,
                "language": self.language, "session_path": self.recorder.session_path(self.kernel_id)}

    # -- shell, through the server's websocket connections --------------------------------------

    def request(self, header: dict[str, Any], metadata: Any, content: Any, now: float) -> None:
        msg_id = _text(header.get("msg_id"))
        if msg_id is None or msg_id in self.pending:
            return
        ex = Execution(msg_id, now, "websocket")
        if isinstance(metadata, dict):
            ex.cell_id = _text(metadata.get("cellId"))
        code = content.get("code") if isinstance(content, dict) else None
        if isinstance(code, str):
            ex.code, ex.code_bytes = code, len(code.encode())
        self._add(ex)
        self.recorder.session_path(self.kernel_id)  # looked up now, known when the record is written

    def reply(self, parent_id: str, content: dict[str, Any], now: float) -> None:
        ex = self.pending.get(parent_id)
        if ex is None:
            return
        ex.replied, ex.status = now, _text(content.get("status"))
        ex.count = _int(content.get("execution_count")) if ex.count is None else ex.count
        if ex.status == "error" and ex.ename is None:
            ex.ename = _text(content.get("ename"))
        self._maybe_finish(ex)

    # -- iopub, on the kernel's own SUB socket -------------------------------------------------

    def iopub(self, msg_list: list[bytes], now: float) -> None:
        try:
            i = msg_list.index(DELIM)
        except ValueError:
            return
        frames = msg_list[i + 2:]  # header, parent_header, metadata, content, buffers...
        if len(frames) < 4:
            return
        # Every message of every kernel passes here: fields are picked out of the JSON bytes
        # (ids are the kernel's and the client's, not ours to trust anyway), json only when needed.
        found = _MSG_TYPE.search(frames[0])
        msg_type = found.group(1) if found else b""
        if msg_type not in _WATCHED:
            return
        if (own := _MSG_ID.search(frames[0])) is not None:  # read once, whichever source
            if own.group(1) in self.seen:
                return
            self.seen[own.group(1)] = None
            if len(self.seen) > SEEN_IOPUB:
                del self.seen[next(iter(self.seen))]
        parent = frames[1]
        if b'"execute_request"' not in parent or (found := _MSG_ID.search(parent)) is None:
            return
        msg_id = found.group(1).decode()
        ex = self.pending.get(msg_id)
        if msg_type == b"status":
            if b'"busy"' in frames[3]:
                if ex is None:  # a client on the kernel's own ports: only iopub tells us
                    ex = Execution(msg_id[:255], _request_time(json.loads(parent), now), "kernel")
                    self._add(ex)
                ex.started = ex.started or now
            elif b'"idle"' in frames[3] and ex is not None:
                ex.idle = now
                self._maybe_finish(ex)
        elif ex is None:
            return
        elif msg_type == b"execute_input":
            count = _COUNT.search(frames[3])
            ex.count = int(count.group(1)) if count else ex.count
            if ex.code is None:
                code = json.loads(frames[3]).get("code")
                if isinstance(code, str):
                    ex.code, ex.code_bytes = code, len(code.encode())
        else:  # an output: only its size is kept
            ex.output_bytes += sum(len(f) for f in frames[3:])
            if msg_type == b"error" and ex.ename is None:
                ex.ename = _text(json.loads(frames[3]).get("ename"))
            elif msg_type == b"execute_result" and ex.count is None:
                count = _COUNT.search(frames[3])
                ex.count = int(count.group(1)) if count else None

    # -- lifecycle ------------------------------------------------------------------------------

    def interrupted(self) -> None:
        for ex in self.pending.values():
            ex.interrupted = True

    def close_all(self) -> None:
        """The kernel died, restarted or stopped: what was in flight ends here."""
        for ex in list(self.pending.values()):
            self._finish(ex)

    def _add(self, ex: Execution) -> None:
        if len(self.pending) >= MAX_PENDING:
            self._finish(next(iter(self.pending.values())))
        self.pending[ex.msg_id] = ex

    def _maybe_finish(self, ex: Execution) -> None:
        if ex.idle is not None and (ex.replied is not None or ex.client == "kernel"):
            self._finish(ex)
        elif ex.timer is None:  # one of reply and idle came: the other has a moment to follow
            ex.timer = asyncio.get_running_loop().call_later(REPLY_GRACE, self._finish, ex)

    def _finish(self, ex: Execution) -> None:
        if self.pending.pop(ex.msg_id, None) is None:
            return
        if ex.timer is not None:
            ex.timer.cancel()
        outcome = ex.outcome()
        ends = [t for t in (ex.replied, ex.idle) if t is not None]
        ended = max(ends) if ends and outcome != "unfinished" else None
        start = ex.started if ex.started is not None else ex.requested
        self.recorder.write(self.recorder.origin.record(
            "execution", time=iso(ex.requested), **self.fields(), requested=iso(ex.requested),
            started=iso(ex.started) if ex.started is not None else None,
            ended=iso(ended) if ended is not None else None,
            duration_ms=round(max(0.0, ended - start) * 1000, 3) if ended is not None else None,
            outcome=outcome, ename=ex.ename if outcome in ("error", "unfinished") else None,
            interrupted=ex.interrupted, execution_count=ex.count, cell_id=ex.cell_id,
            msg_id=ex.msg_id, client=ex.client, code=keep_code(self.recorder.code_policy, ex.code or ""),
            code_bytes=ex.code_bytes, output_bytes=ex.output_bytes))


def _request_time(parent: dict[str, Any], fallback: float) -> float:
    """The request's own date (the client's clock), where the server never saw the request."""
    try:
        text = str(parent.get("date", ""))
        stamp = parse_iso(text) if text.endswith("Z") and "." in text else None
    except ValueError:
        stamp = None
    return stamp if stamp is not None and abs(stamp - fallback) < 3600 else fallback


class Recorder:
    """Writes records for one server; owns the per-kernel watches."""

    def __init__(self, origin: Origin, code_policy: str, write: Writer,
                 session_path: Callable[[str], str | None] = lambda kernel_id: None,
                 client_connects: Callable[[str], None] = lambda kernel_id: None,
                 own_iopub: Callable[[KernelWatch, bool], None] = lambda watch, needed: None):
        keep_code(code_policy, "")  # refuse an unknown policy at once
        self.origin, self.code_policy, self._write = origin, code_policy, write
        self.session_path, self.client_connects = session_path, client_connects
        self.own_iopub = own_iopub  # (watch, needed): open or close our own SUB socket
        self.kernels: dict[str, KernelWatch] = {}
        self._queue: list[tuple[Callable[..., None], tuple[Any, ...]]] = []
        self._scheduled = False

    def later(self, fn: Callable[..., None], *args: Any) -> None:
        """Run `fn(*args)` once the loop has handled what is ready now. The taps only queue
        (a few µs), so reading and writing records never delays the messages they observe;
        one queue keeps the order in which things happened."""
        self._queue.append((fn, args))
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.drain)

    def drain(self) -> None:
        self._scheduled = False
        queue, self._queue = self._queue, []
        for fn, args in queue:
            try:
                fn(*args)
            except Exception:  # one unreadable message must not stop the others
                log.debug("activity: could not read a message", exc_info=True)

    def write(self, record: dict[str, Any]) -> None:
        self._write(record)

    def event(self, kind: str, **fields: Any) -> None:
        self.write(self.origin.record(kind, **fields))

    def kernel_event(self, kind: str, watch: KernelWatch, reason: str | None = None) -> None:
        self.event(kind, **watch.fields(), reason=reason)

    # -- the websocket tap ------------------------------------------------------------------------

    def from_client(self, kernel_id: str, header: dict[str, Any], metadata: Any, content: Any,
                    now: float) -> None:
        watch = self.kernels.get(kernel_id)
        if watch is not None and header.get("msg_type") == "execute_request":
            watch.request(header, metadata, content, now)

    def websocket_iopub(self, kernel_id: str, connection: Any, msg_list: list[Any],
                        now: float) -> None:
        """An IOPub message jupyter_server forwarded to one websocket. The first connection that
        forwards one becomes the kernel's IOPub source (our own socket closes); the others'
        copies are not read."""
        watch = self.kernels.get(kernel_id)
        if watch is None:
            return
        if watch.source is None:
            watch.source = connection
            self.own_iopub(watch, False)
        elif watch.source is not connection:
            return
        watch.iopub([bytes(f) for f in msg_list], now)

    def websocket_closed(self, kernel_id: str, connection: Any) -> None:
        """A websocket went away: if it was the IOPub source, our own socket takes over (the
        next connection to forward a message takes over from it in turn)."""
        watch = self.kernels.get(kernel_id)
        if watch is not None and watch.source is connection:
            watch.source = None
            self.own_iopub(watch, True)

    def shell_out(self, kernel_id: str, msg_list: list[Any], now: float) -> None:
        """A message from the kernel's shell to a websocket, as zmq gave it."""
        frames = msg_list[msg_list.index(DELIM) + 2:]
        self.shell_reply(kernel_id, [bytes(f) for f in frames[:4]], now)

    def shell_reply(self, kernel_id: str, frames: list[bytes], now: float) -> None:
        """A message from the kernel's shell to a websocket (frames after the signature)."""
        watch = self.kernels.get(kernel_id)
        if watch is None or len(frames) < 4 or b"execute_reply" not in frames[0]:
            return
        if json.loads(frames[0]).get("msg_type") != "execute_reply":
            return
        parent = json.loads(frames[1])
        content = json.loads(frames[3])
        if isinstance(parent, dict) and isinstance(content, dict):
            watch.reply(str(parent.get("msg_id")), content, now)
