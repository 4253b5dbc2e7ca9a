"""The shell tap: the server's kernel websocket connection, subclassed to read what it forwards.

jupyter_server builds one connection object per kernel websocket from the web app's setting
`kernel_websocket_connection_class`; the extension puts a subclass of whatever class is there.
Each method forwards first (super()), then queues for the recorder (read once the loop is free):
an execute_request as the server received it (JSON text or the v1 binary protocol JupyterLab
uses), each execute_reply going back, the kernel's IOPub messages (the recorder reads one
connection's per kernel) and the connection's end.
"""

from __future__ import annotations

import json
import time
from typing import Any

from gateway.job.activity.recorder import Recorder


def client_request(message: Any, subprotocol: str | None) -> tuple[dict[str, Any], Any, Any] | None:
    """(header, metadata, content) of a client's execute_request; None for anything else."""
    if subprotocol == "v1.kernel.websocket.jupyter.org":
        from jupyter_server.services.kernels.connection.base import deserialize_msg_from_ws_v1

        channel, parts = deserialize_msg_from_ws_v1(message)
        if channel != "shell" or len(parts) < 4 or b"execute_request" not in parts[0]:
            return None
        header = json.loads(parts[0])
        return header, json.loads(parts[2]), json.loads(parts[3])
    if not isinstance(message, str) or '"execute_request"' not in message:
        return None
    msg = json.loads(message)
    if not isinstance(msg, dict) or msg.get("channel", "shell") != "shell":
        return None
    header = msg.get("header")
    return (header, msg.get("metadata"), msg.get("content")) if isinstance(header, dict) else None


def _client_message(recorder: Recorder, kernel_id: str, message: Any, subprotocol: str | None,
                    now: float) -> None:
    request = client_request(message, subprotocol)
    if request is not None:
        recorder.from_client(kernel_id, *request, now)


def recording_connection(base: type, recorder: Recorder) -> type:
    """A subclass of the server's connection class that tells `recorder` about executions."""

    class RecordingConnection(base):  # type: ignore[misc, valid-type]
        def connect(self) -> Any:
            recorder.client_connects(self.kernel_id)
            return super().connect()

        def handle_incoming_message(self, incoming_msg: Any) -> None:
            now = time.time()
            super().handle_incoming_message(incoming_msg)
            recorder.later(_client_message, recorder, self.kernel_id, incoming_msg, self.subprotocol,
                           now)

        def handle_outgoing_message(self, stream: Any, outgoing_msg: list[Any]) -> None:
            super().handle_outgoing_message(stream, outgoing_msg)
            channel = stream if isinstance(stream, str) else getattr(stream, "channel", None)
            if channel == "iopub":
                recorder.later(recorder.websocket_iopub, self.kernel_id, self, outgoing_msg,
                               time.time())
            elif channel == "shell":
                recorder.later(recorder.shell_out, self.kernel_id, outgoing_msg, time.time())

        def disconnect(self) -> Any:
            try:
                return super().disconnect()
            finally:  # after what this connection forwarded before it
                recorder.later(recorder.websocket_closed, self.kernel_id, self)

    RecordingConnection.__name__ = RecordingConnection.__qualname__ = f"Recording{base.__name__}"
    return RecordingConnection
