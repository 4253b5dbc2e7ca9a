"""The server's activity buffer (JSON Lines, append-only, mode 0600) and its delivery to the hub.

Each record is one os.write() of one line on an O_APPEND descriptor, so a job killed with SIGKILL
loses at most the line being written. A torn last line is closed with a newline when the buffer
is opened again, and the deliverer skips lines that are not JSON.

Delivery is at-least-once: the deliverer posts unsent complete lines in batches to the hub's
`POST {JUPYTERHUB_API_URL}/hpcgate/activity` with the server's own token, then remembers the
offset delivered in a small state file. A hub that is away (restart, tunnel down) delays records,
never loses them: the same batch is posted again, and the hub stores each record id once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from gateway.job.private import write_private

log = logging.getLogger("hpcgate.activity")
Poster = Callable[[list[dict[str, Any]]], Awaitable[tuple[int, bytes]]]
ACTIVITY_API = "/hpcgate/activity"


class Buffer:
    """Append-only JSON Lines file, written as the server's user."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                          0o600)
        os.fchmod(self.fd, 0o600)  # an older file with looser bits too
        size = os.fstat(self.fd).st_size
        if size:
            with open(path, "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":  # the last write was torn (SIGKILL): close that line
                    os.write(self.fd, b"\n")

    def append(self, line: bytes) -> None:
        os.write(self.fd, line)

    def close(self) -> None:
        os.close(self.fd)


class DeliveryState:
    """The byte offset up to which the buffer reached the hub, in a small file next to it."""

    def __init__(self, path: Path):
        self.path = path

    def load(self) -> int:
        try:
            return max(0, int(json.loads(self.path.read_text())["offset"]))
        except (OSError, ValueError, KeyError, TypeError):
            return 0

    def save(self, offset: int) -> None:
        write_private(self.path, json.dumps({"offset": offset}).encode())


def read_batch(path: Path, offset: int, max_records: int, max_bytes: int
               ) -> tuple[list[dict[str, Any]], int]:
    """Complete lines from `offset`: (records, offset after the last line read). Lines that are
    not a JSON object (a torn write) are skipped."""
    records: list[dict[str, Any]] = []
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(max_bytes)
    end = data.rfind(b"\n") + 1
    if end == 0 and len(data) == max_bytes:  # one line longer than max_bytes: it cannot be sent
        log.warning("activity: skipping an oversized line at offset %d", offset)
        return [], _after_line(path, offset + len(data))
    pos = 0
    while pos < end and len(records) < max_records:
        nl = data.index(b"\n", pos)
        line = data[pos:nl]
        pos = nl + 1
        try:
            rec = json.loads(line)
        except ValueError:
            rec = None
        if isinstance(rec, dict):
            records.append(rec)
        elif line.strip():
            log.warning("activity: skipping a line that is not a record (torn write?) at %d", offset)
    return records, offset + pos


def _after_line(path: Path, offset: int) -> int:
    """The offset just past the newline at or after `offset` (the file's end without one)."""
    with open(path, "rb") as f:
        f.seek(offset)
        while chunk := f.read(1 << 16):
            if b"\n" in chunk:
                return offset + chunk.index(b"\n") + 1
            offset += len(chunk)
    return offset


def hub_poster(api_url: str, token: str, timeout: float = 20) -> Poster:
    """POST batches to the hub with JupyterHub's own client, which speaks http:// and https://, and
    http+unix:// (the API's socket at the job's end of a reverse tunnel)."""
    url = api_url.rstrip("/") + ACTIVITY_API

    async def post(records: list[dict[str, Any]]) -> tuple[int, bytes]:
        import aiohttp
        from jupyterhub.httpclient import fetch

        try:
            resp = await fetch(url, method="POST", raise_for_status=False,
                               json={"records": records},
                               headers={"Authorization": f"token {token}"},
                               timeout=aiohttp.ClientTimeout(total=timeout))
            async with resp:
                return resp.status, await resp.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as err:
            raise OSError(str(err) or type(err).__name__) from err
    return post


class Deliverer:
    """Sends the unsent part of the buffer to the hub, in batches, with back-off while it is away."""

    def __init__(self, buffer_path: Path, state: DeliveryState, post: Poster, *, batch: int = 500,
                 max_bytes: int = 4 << 20, linger: float = 1.0, min_delay: float = 1.0,
                 max_delay: float = 60.0):
        self.buffer_path, self.state, self.post = buffer_path, state, post
        self.batch, self.max_bytes, self.linger = batch, max_bytes, linger
        self.min_delay, self.max_delay = min_delay, max_delay
        self.offset = state.load()
        self.wake = asyncio.Event()
        self.delivered = 0
        self.failures = 0

    def pending(self) -> bool:
        try:
            return self.buffer_path.stat().st_size > self.offset
        except OSError:
            return False

    async def run(self) -> None:
        delay, stalled = self.min_delay, False
        while True:
            self.wake.clear()
            if stalled or not self.pending():
                await self.wake.wait()
                await asyncio.sleep(self.linger)  # a burst of cells leaves as one batch
            try:
                stalled = not await self.send_once()
                delay = self.min_delay
            except OSError as err:
                self.failures += 1
                log.info("activity: the hub did not take records (%s); next try in %.0f s",
                         err, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_delay)

    async def send_once(self) -> bool:
        """Send one batch; whether the delivered offset moved. OSError when the hub did not
        take the batch."""
        records, end = await asyncio.to_thread(read_batch, self.buffer_path, self.offset,
                                               self.batch, self.max_bytes)
        if records:
            status, body = await self.post(records)
            if status != 200:
                raise OSError(f"HTTP {status}: {body[:200].decode(errors='replace')}")
            answer = json.loads(body or b"{}")
            for refused in answer.get("rejected", []):
                # Never accepted however often it is sent (it fails the schema, or names
                # another server): the hub said why, and the buffer keeps it.
                log.warning("activity: the hub refused record %s: %s", refused.get("id"),
                            refused.get("reason"))
            self.delivered += len(answer.get("stored", []))
        if end == self.offset:
            return False
        self.offset = end
        await asyncio.to_thread(self.state.save, end)
        return True

    async def flush(self, timeout: float) -> bool:
        """Try to send everything now (at server stop), for at most `timeout` s."""
        async def drain() -> None:
            while self.pending() and await self.send_once():
                pass
        try:
            await asyncio.wait_for(drain(), timeout)
            return True
        except (OSError, asyncio.TimeoutError):
            return False
