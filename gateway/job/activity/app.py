"""The jupyter_server extension: wires the recorder into a running server.

- kernels: jupyter_server's event bus (kernel_actions: start, restart, interrupt, shutdown)
  attaches a watch with its own IOPub socket to each kernel; the kernel restarter's callbacks say
  when a kernel died;
- the shell: the web app's kernel websocket connection class, subclassed (connection.py);
- files: the contents events (get and save of notebooks); terminals: the terminal manager's
  create and terminate; the server: start here, stop in `stop_extension` with the signal that
  caused it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import zmq
from jupyter_client.connect import ConnectionFileMixin
from jupyter_core.paths import jupyter_runtime_dir
from jupyter_server.extension.application import ExtensionApp
from traitlets import Enum, Float, Int, Unicode, default

from gateway.job.activity.buffer import Buffer, Deliverer, DeliveryState, hub_poster
from gateway.job.activity.connection import recording_connection
from gateway.job.activity.recorder import KernelWatch, Recorder
from gateway.job.activity.records import CODE_POLICIES, Origin, encode
from gateway.job.files import DOWNLOAD_LISTENER

KERNEL_ACTIONS = "https://events.jupyter.org/jupyter_server/kernel_actions/v1"
CONTENTS = "https://events.jupyter.org/jupyter_server/contents_service/v1"
BUFFER_NAME, STATE_NAME = "activity.jsonl", "activity.delivered"


class ActivityRecorder(ExtensionApp):
    """Records every kernel execution and the server's events in an append-only buffer, and
    delivers them to the hub's activity store."""

    name = "hpcgate_activity"
    load_other_extensions = True

    code = Enum(list(CODE_POLICIES), "hash", config=True,
                help="What is kept of executed code: none, hash (SHA-256 and line count) or full "
                     "(the text). hpcgate's launcher sets it from the site policy's activity.code.")
    state_dir = Unicode(config=True,
                        help="Where the buffer (activity.jsonl, mode 0600) and the delivered "
                             "offset live. The launcher uses the server's own directory.")
    hub_api_url = Unicode(config=True,
                          help="The hub API records go to (http://, https:// or http+unix://); "
                               "empty: records stay in the buffer.")
    max_delay = Float(60.0, config=True, help="Longest wait between delivery attempts, in s.")
    stop_flush = Float(5.0, config=True, help="Seconds spent delivering the last records at stop.")
    session_ttl = Float(5.0, config=True, help="Seconds a kernel's session path is cached.")
    download_min = Int(8 << 20, config=True,
                       help="A transfer through /files/ is recorded (kind download: path and "
                            "bytes) once it has sent this many bytes; smaller ones are not.")

    @default("state_dir")
    def _default_state_dir(self) -> str:
        return os.path.join(jupyter_runtime_dir(), "hpcgate-activity")

    @default("hub_api_url")
    def _default_hub_api_url(self) -> str:
        return os.environ.get("JUPYTERHUB_API_URL", "")

    def initialize_settings(self) -> None:
        logger = logging.getLogger("hpcgate.activity")  # the modules' lines in the server's log
        logger.parent, logger.propagate = self.log, True
        state = Path(self.state_dir)
        _rotate_if_delivered(state)
        self.buffer = Buffer(state / BUFFER_NAME)
        self.deliverer: Deliverer | None = None
        token = os.environ.get("JUPYTERHUB_API_TOKEN", "")
        if self.hub_api_url and token:
            self.deliverer = Deliverer(state / BUFFER_NAME, DeliveryState(state / STATE_NAME),
                                       hub_poster(self.hub_api_url, token), max_delay=self.max_delay)
        self.paths = SessionPaths(self.serverapp.session_manager, self.session_ttl)
        self.recorder = Recorder(Origin.from_environment(), self.code, self._write, self.paths.get,
                                 self._client_connects, self._own_iopub)
        self.stop_reason = "shutdown"
        self._task: asyncio.Task[None] | None = None
        self._opened: dict[str, float] = {}
        # self.settings: a copy of the web app's, merged back into it after this method returns.
        base = self.settings.get("kernel_websocket_connection_class")
        if base is not None and hasattr(base, "handle_outgoing_message"):  # ZMQ channels (not a gateway)
            self.settings["kernel_websocket_connection_class"] = recording_connection(base, self.recorder)
            self.log.info("activity: recording executions in %s (code kept: %s)", state, self.code)
        else:
            self.log.warning("activity: kernel websockets of %r are not recorded (shell side)", base)
        # gateway.job.files.TrackedFileHandler reports each finished transfer here.
        self.settings[DOWNLOAD_LISTENER] = self._on_download
        events = self.serverapp.event_logger
        events.add_listener(schema_id=KERNEL_ACTIONS, listener=self._on_kernel_action)
        events.add_listener(schema_id=CONTENTS, listener=self._on_contents)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self._note_signal(signum)

    def _write(self, record: dict[str, Any]) -> None:
        self.buffer.append(encode(record))
        if self.deliverer is not None:
            self.deliverer.wake.set()

    async def _start_jupyter_server_extension(self, serverapp: Any) -> None:
        self.recorder.event("server_start", reason=None)
        self._hook_terminals(serverapp.web_app.settings.get("terminal_manager"))
        if self.deliverer is not None:
            self._task = asyncio.ensure_future(self.deliverer.run())

    async def stop_extension(self) -> None:
        self.recorder.drain()
        for watch in list(self.recorder.kernels.values()):
            watch.close_all()
        self.recorder.event("server_stop", reason=self.stop_reason)
        if self._task is not None:
            self._task.cancel()
        if self.deliverer is not None and not await self.deliverer.flush(self.stop_flush):
            self.log.warning("activity: records left in %s for the next start", self.buffer.path)
        self.buffer.close()

    def _note_signal(self, signum: int) -> None:
        previous = signal.getsignal(signum)
        if not callable(previous):
            return

        def note(sig: int, frame: Any) -> None:
            self.stop_reason = f"signal {signal.Signals(sig).name}"
            previous(sig, frame)  # type: ignore[operator]
        signal.signal(signum, note)

    # -- kernels --------------------------------------------------------------------------------

    async def _on_kernel_action(self, logger: Any, schema_id: str, data: dict[str, Any]) -> None:
        kernel_id, action = data.get("kernel_id"), data.get("action")
        if data.get("status") != "success" or not kernel_id:
            return
        self.recorder.later(self._kernel_action, kernel_id, action)  # after the messages before it

    def _kernel_action(self, kernel_id: str, action: Any) -> None:
        rec = self.recorder
        watch = rec.kernels.get(kernel_id)
        if action == "start" or watch is None:
            watch = self._attach(kernel_id)
            if watch is None:
                return
            if action == "start":
                rec.kernel_event("kernel_start", watch)
                return
        if action == "restart":
            watch.close_all()
            reason, watch.died = ("died" if watch.died else "user"), False
            watch.source = None  # until a websocket forwards from the restarted kernel again
            self._listen(watch)  # a restart may bring new ports
            rec.kernel_event("kernel_restart", watch, reason)
        elif action == "interrupt":
            watch.interrupted()
            rec.kernel_event("kernel_interrupt", watch)
        elif action == "shutdown":
            watch.close_all()
            rec.kernel_event("kernel_shutdown", watch)
            self._detach(watch)

    def _attach(self, kernel_id: str) -> KernelWatch | None:
        km = self.serverapp.kernel_manager
        try:
            kernel = km.get_kernel(kernel_id)
        except KeyError:
            return None
        watch = KernelWatch(self.recorder, kernel_id, kernel.kernel_name, self._language(kernel))
        self.recorder.kernels[kernel_id] = watch
        self._listen(watch)
        km.add_restart_callback(kernel_id, lambda: self.recorder.later(self._died, watch, "restarting"),
                                "restart")
        km.add_restart_callback(kernel_id,
                                lambda: self.recorder.later(self._died, watch, "not restarted"), "dead")
        return watch

    def _listen(self, watch: KernelWatch) -> None:
        """Our own SUB socket on the kernel's IOPub. Read on the loop's reader callback, every
        waiting message at once, without a ZMQStream: each IOPub message costs the server one
        more dispatch, so that dispatch is kept to a non-blocking recv."""
        self._unlisten(watch)
        kernel = self.serverapp.kernel_manager.get_kernel(watch.kernel_id)
        owner = ConnectionFileMixin.connect_iopub(kernel)  # an asyncio socket: it owns the fd
        sock = zmq.Socket.shadow(owner.underlying)  # a plain view of it, for non-blocking reads
        watch.heard, watch.stream = False, sock
        fd = sock.getsockopt(zmq.FD)
        loop = asyncio.get_running_loop()

        def readable() -> None:
            # zmq's FD is edge-triggered: read until nothing is left.
            while watch.stream is sock:
                try:
                    msg_list = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    return
                except zmq.ZMQError:
                    self._unlisten(watch)
                    return
                watch.heard = True
                self.recorder.later(watch.iopub, msg_list, time.time())
        loop.add_reader(fd, readable)
        watch.unlisten = lambda: (loop.remove_reader(fd), owner.close(linger=0))
        loop.call_soon(readable)  # messages that came before the reader was in place

    def _unlisten(self, watch: KernelWatch) -> None:
        if watch.stream is not None:
            watch.stream = None
            watch.unlisten()

    def _own_iopub(self, watch: KernelWatch, needed: bool) -> None:
        if not needed:
            self._unlisten(watch)
        elif watch.stream is None and watch.kernel_id in self.recorder.kernels:
            try:
                self._listen(watch)
            except KeyError:  # the kernel is gone
                pass

    def _client_connects(self, kernel_id: str) -> None:
        """A websocket is connecting. A SUB socket that connected while the kernel was still
        starting can take seconds to join; one made now, as jupyter_server makes its own, is
        in place by the time the connection's kernel_info nudge has gone through."""
        watch = self.recorder.kernels.get(kernel_id)
        if watch is not None and watch.source is None and not watch.heard:
            self._listen(watch)

    def _died(self, watch: KernelWatch, how: str) -> None:
        if watch.died:
            return
        watch.died = True
        watch.close_all()
        self.recorder.kernel_event("kernel_died", watch, how)
        if how == "not restarted":
            self._detach(watch)

    def _detach(self, watch: KernelWatch) -> None:
        self.recorder.kernels.pop(watch.kernel_id, None)
        self._unlisten(watch)
        self.paths.forget(watch.kernel_id)

    def _language(self, kernel: Any) -> str:
        try:
            spec = self.serverapp.kernel_spec_manager.get_kernel_spec(kernel.kernel_name)
            return str(spec.language or "unknown")
        except Exception:
            return "unknown"

    # -- files and terminals --------------------------------------------------------------------

    async def _on_contents(self, logger: Any, schema_id: str, data: dict[str, Any]) -> None:
        path, action = str(data.get("path", "")), data.get("action")
        if not path.endswith(".ipynb"):
            return
        if action == "save":
            self.recorder.event("notebook_save", path=path)
        elif action == "get":
            # JupyterLab reads a notebook's model again around each save: one open per 30 s.
            now = time.monotonic()
            if now - self._opened.get(path, -1e9) > 30:
                self._opened[path] = now
                self.recorder.event("notebook_open", path=path)

    def _on_download(self, path: str, sent: int, range_start: int, file_bytes: int) -> None:
        if sent >= self.download_min:
            self.recorder.event("download", path=path, bytes=sent, range_start=range_start,
                                file_bytes=file_bytes)

    def _hook_terminals(self, manager: Any) -> None:
        if manager is None:
            return
        rec, create, terminate = self.recorder, manager.create, manager.terminate

        def created(**kwargs: Any) -> Any:
            model = create(**kwargs)
            rec.event("terminal_open", terminal=str(model.get("name", "")))
            return model

        async def terminated(name: str, force: bool = False) -> None:
            await terminate(name, force=force)
            rec.event("terminal_close", terminal=str(name))
        manager.create, manager.terminate = created, terminated


class SessionPaths:
    """Kernel id -> the notebook or console path of its session, cached, looked up off the hot
    path: a miss schedules a lookup and answers what is known."""

    def __init__(self, session_manager: Any, ttl: float):
        self.sessions, self.ttl = session_manager, ttl
        self.known: dict[str, tuple[str | None, float]] = {}
        self.looking: set[str] = set()

    def get(self, kernel_id: str) -> str | None:
        path, checked = self.known.get(kernel_id, (None, -1e9))
        stale = path is None or time.monotonic() - checked > self.ttl  # no session yet: ask again
        if stale and kernel_id not in self.looking:
            self.looking.add(kernel_id)
            asyncio.ensure_future(self._lookup(kernel_id))
        return path

    async def _lookup(self, kernel_id: str) -> None:
        try:
            session = await self.sessions.get_session(kernel_id=kernel_id)
            path = session.get("path") or None
        except Exception:
            path = None
        finally:
            self.looking.discard(kernel_id)
        self.known[kernel_id] = (path, time.monotonic())

    def forget(self, kernel_id: str) -> None:
        self.known.pop(kernel_id, None)


def _rotate_if_delivered(state: Path) -> None:
    """A buffer the hub has wholly received starts over (the previous one is kept as .1)."""
    buffer = state / BUFFER_NAME
    try:
        size = buffer.stat().st_size
    except OSError:
        return
    if size and DeliveryState(state / STATE_NAME).load() >= size:
        os.replace(buffer, state / (BUFFER_NAME + ".1"))
        DeliveryState(state / STATE_NAME).save(0)
