"""The job's activity buffer: one line per record, 0600, a torn last line survives a restart, and
the deliverer keeps the offset only for what the hub took."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from gateway.job.activity.buffer import Buffer, Deliverer, DeliveryState, read_batch
from gateway.job.activity.records import Origin, encode
from gateway.job.launcher import activity_args


def records(n: int) -> list[dict]:
    origin = Origin(user="alice", server="", job_id=None, node="c1")
    return [origin.record("server_start", reason=str(i)) for i in range(n)]


def test_a_torn_line_is_closed_and_skipped(tmp_path: Path) -> None:
    path = tmp_path / "s" / "activity.jsonl"
    buf = Buffer(path)
    recs = records(3)
    buf.append(encode(recs[0]))
    buf.append(encode(recs[1])[:20])  # SIGKILL in the middle of a write
    buf.close()
    buf = Buffer(path)  # the next start
    buf.append(encode(recs[2]))
    buf.close()
    assert path.stat().st_mode & 0o777 == 0o600
    got, end = read_batch(path, 0, 100, 1 << 20)
    assert [r["id"] for r in got] == [recs[0]["id"], recs[2]["id"]]
    assert end == path.stat().st_size


def test_a_partial_last_line_waits(tmp_path: Path) -> None:
    path = tmp_path / "activity.jsonl"
    line = encode(records(1)[0])
    path.write_bytes(line + line[:10])
    got, end = read_batch(path, 0, 100, 1 << 20)
    assert len(got) == 1 and end == len(line)


async def test_delivery_resumes_after_failures_without_loss(tmp_path: Path) -> None:
    path = tmp_path / "activity.jsonl"
    buf = Buffer(path)
    recs = records(7)
    for r in recs:
        buf.append(encode(r))
    hub: list[str] = []
    up = False

    async def post(batch: list[dict]) -> tuple[int, bytes]:
        if not up:
            raise OSError("connection refused")
        hub.extend(r["id"] for r in batch)
        return 200, json.dumps({"stored": [r["id"] for r in batch]}).encode()

    state = DeliveryState(tmp_path / "activity.delivered")
    d = Deliverer(path, state, post, batch=3, linger=0, min_delay=0.01, max_delay=0.02)
    task = asyncio.ensure_future(d.run())
    await asyncio.sleep(0.1)
    assert hub == [] and d.failures >= 2 and state.load() == 0
    up = True
    for _ in range(100):
        if not d.pending():
            break
        await asyncio.sleep(0.02)
    assert hub == [r["id"] for r in recs] and state.load() == path.stat().st_size
    extra = records(1)[0]
    buf.append(encode(extra))
    d.wake.set()
    for _ in range(100):
        if len(hub) == 8:
            break
        await asyncio.sleep(0.02)
    task.cancel()
    assert hub[-1] == extra["id"] and len(set(hub)) == 8


def test_the_launcher_enables_the_recorder_with_the_policy(tmp_path: Path) -> None:
    args = activity_args({"activity": {"code": "none"}}, tmp_path)
    import ast

    [extensions] = [a.split("=", 1)[1] for a in args if a.startswith("--ServerApp.jpserver_extensions=")]
    # The recorder, and the session's time left for JupyterLab (gateway.job.session).
    assert ast.literal_eval(extensions) == {"gateway.job.activity": True, "gateway.job.session": True}
    assert f"--ActivityRecorder.state_dir={tmp_path}" in args
    assert "--ActivityRecorder.code=none" in args
    # activity.record: false: the session extension only, nothing recorded.
    off = activity_args({"activity": {"record": False, "code": "full"}}, tmp_path)
    assert off == ["--ServerApp.jpserver_extensions={'gateway.job.session': True}"]
