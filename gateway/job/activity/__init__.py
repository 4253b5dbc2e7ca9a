"""hpcgate's activity recorder, a jupyter_server extension: every kernel execution and the
server's events, in an append-only buffer in the job, delivered to the hub's store.

    jupyter server --ServerApp.jpserver_extensions='{"gateway.job.activity": true}'

The launcher enables it in every hpcgate server. Modules: `records` (the record format, the
schema in gateway/job/activity_schema.json), `recorder` (executions from kernel messages),
`connection` (the websocket tap), `buffer` (the buffer and delivery), `app` (the wiring).
"""

from __future__ import annotations

from typing import Any


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from gateway.job.activity.app import ActivityRecorder  # jupyter_server only when loaded

    return [{"module": "gateway.job.activity", "app": ActivityRecorder}]
