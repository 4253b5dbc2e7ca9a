"""The hub's activity store: every server's activity records, in a SQLite file the hub owns.

The authoritative copy for organisers (a user can edit the buffer in their job, not this). Inserts
are idempotent by record id (delivery is at-least-once), and records older than the site
policy's `activity.retention` are deleted at insert time (at most every `purge_every` seconds).
SQLite work runs on one thread of its own, never on the hub's event loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from traitlets import Float, Unicode
from traitlets.config import SingletonConfigurable

from gateway.job.activity.records import parse_iso

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    server TEXT NOT NULL,
    kind TEXT NOT NULL,
    time REAL NOT NULL,      -- the record's time, never later than its arrival
    received REAL NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_user_time ON records (user, time);
CREATE INDEX IF NOT EXISTS records_time ON records (time);
"""


def retention_cutoff(retention: timedelta, now: float) -> float:
    """Records from before this time (epoch s) are deleted."""
    return now - retention.total_seconds()


class ActivityStore(SingletonConfigurable):
    """SQLite store of activity records, one per hub."""

    db_path = Unicode("hpcgate-activity.sqlite", config=True,
                      help="The activity store's SQLite file (created mode 0600, owned by the hub's "
                           "user). Relative paths are from the hub's working directory, like "
                           "JupyterHub's own jupyterhub.sqlite.")
    purge_every = Float(600.0, config=True,
                        help="Seconds between deletions of records older than the retention.")

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="hpcgate-activity")
        self._db: sqlite3.Connection | None = None
        self._purged = float("-inf")

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            if self.db_path != ":memory:" and not os.path.exists(self.db_path):
                os.close(os.open(self.db_path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600))
            self._db = sqlite3.connect(self.db_path, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(SCHEMA)
        return self._db

    async def insert(self, records: list[dict[str, Any]], retention: timedelta,
                     now: float | None = None) -> list[str]:
        """Store records (already validated); the ids now held, new or not."""
        return await self._run(self._insert, records, retention, time.time() if now is None else now)

    def _insert(self, records: list[dict[str, Any]], retention: timedelta, now: float) -> list[str]:
        db = self._conn()
        cutoff = retention_cutoff(retention, now)
        rows = []
        for rec in records:
            at = min(parse_iso(rec["time"]), now)  # a clock in the future does not outlive retention
            if at >= cutoff:
                rows.append((rec["id"], rec["user"], rec["server"], rec["kind"], at, now,
                             json.dumps(rec, separators=(",", ":"))))
        with db:
            db.executemany("INSERT OR IGNORE INTO records VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            if now - self._purged >= self.purge_every:
                self._purged = now
                db.execute("DELETE FROM records WHERE time < ?", (cutoff,))
        return [rec["id"] for rec in records]

    async def purge(self, retention: timedelta, now: float | None = None) -> int:
        """Delete records older than the retention now; how many went."""
        return await self._run(self._purge, retention_cutoff(retention, time.time() if now is None
                                                              else now))

    def _purge(self, cutoff: float) -> int:
        with self._conn() as db:
            return db.execute("DELETE FROM records WHERE time < ?", (cutoff,)).rowcount

    async def records(self, user: str, since: float = 0.0, until: float = float("inf")
                      ) -> list[dict[str, Any]]:
        """One user's records, oldest first."""
        return await self._run(self._records, user, since, until)

    def _records(self, user: str, since: float, until: float) -> list[dict[str, Any]]:
        rows = self._conn().execute(
            "SELECT record FROM records WHERE user = ? AND time >= ? AND time <= ? ORDER BY time, id",
            (user, since, min(until, 1e18))).fetchall()
        return [json.loads(r[0]) for r in rows]

    async def close(self) -> None:
        def close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None
        await self._run(close)
