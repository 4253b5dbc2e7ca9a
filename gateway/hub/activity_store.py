"""The hub's activity store: every server's activity records, in a SQLite file the hub owns.

The authoritative copy for organisers (a user can edit the buffer in their job, not this). Inserts
are idempotent by record id (delivery is at-least-once), and records older than the site
policy's `activity.retention` are deleted: on arrival, and every `purge_every` seconds by a task
the hub's activity handlers start (`keep_purging`), so an idle hub forgets on time too. Readers
also never ask for records before the cutoff. SQLite work runs on one thread of its own, never on
the hub's event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from traitlets import Float, Unicode
from traitlets.config import SingletonConfigurable

from gateway.job.activity.records import parse_iso

log = logging.getLogger("hpcgate.activity")

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


def query_records(db: sqlite3.Connection, users: list[str] | None, since: float, until: float,
                  limit: int | None = None, newest_first: bool = False) -> list[dict[str, Any]]:
    """The records of `users` (None: everyone's) with since <= time <= until (epoch s)."""
    if users is not None and not users:
        return []
    where, args = "time >= ? AND time <= ?", [since, min(until, 1e18)]
    if users is not None:
        where += f" AND user IN ({','.join('?' * len(users))})"
        args += users
    order = "DESC" if newest_first else "ASC"
    sql = f"SELECT record FROM records WHERE {where} ORDER BY time {order}, id {order}"  # noqa: S608 - placeholders only
    if limit is not None:
        sql += " LIMIT ?"
        args.append(int(limit))
    return [json.loads(r[0]) for r in db.execute(sql, args).fetchall()]


def open_read_only(path: str) -> sqlite3.Connection:
    """The store's file for reading only (`hpcgate activity export`, beside a running hub)."""
    from urllib.parse import quote

    if not os.path.exists(path):
        raise FileNotFoundError(f"no activity store at {path}")
    return sqlite3.connect(f"file:{quote(os.path.abspath(path))}?mode=ro", uri=True)


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
        self._purging: asyncio.Task[None] | None = None

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

    def keep_purging(self, retention: Callable[[], timedelta]) -> None:
        """Delete expired records now and every `purge_every` s from here on, with the retention
        `retention()` gives at each round (the policy may change; it is called in a thread). Call
        on the hub's loop; a second call does nothing while the task runs."""
        if self._purging is None or self._purging.done():
            self._purging = asyncio.get_running_loop().create_task(self._purge_loop(retention))

    async def _purge_loop(self, retention: Callable[[], timedelta]) -> None:
        while True:
            try:
                now = time.time()
                gone = await self.purge(await asyncio.to_thread(retention), now)  # reads the policy
                self._purged = now
                if gone:
                    log.info("activity: deleted %d records older than the retention", gone)
            except Exception:  # a locked or broken file must not end the task: try again later
                log.exception("activity: deleting expired records failed")
            await asyncio.sleep(self.purge_every)

    async def records(self, user: str, since: float = 0.0, until: float = float("inf")
                      ) -> list[dict[str, Any]]:
        """One user's records, oldest first."""
        return await self.records_of([user], since, until)

    async def records_of(self, users: Collection[str] | None, since: float = 0.0,
                         until: float = float("inf"), limit: int | None = None,
                         newest_first: bool = False) -> list[dict[str, Any]]:
        """The records of `users` (None: everyone's) with since <= time <= until, oldest first
        (or newest first), at most `limit` of them."""
        return await self._run(self._records, None if users is None else sorted(set(users)),
                               since, until, limit, newest_first)

    def _records(self, users: list[str] | None, since: float, until: float, limit: int | None,
                 newest_first: bool) -> list[dict[str, Any]]:
        return query_records(self._conn(), users, since, until, limit, newest_first)

    async def users(self) -> list[str]:
        """Every user with records in the store, sorted."""
        def users() -> list[str]:
            rows = self._conn().execute("SELECT DISTINCT user FROM records ORDER BY user")
            return [r[0] for r in rows.fetchall()]
        return await self._run(users)

    async def oldest(self, users: Collection[str] | None) -> float | None:
        """The time of the oldest record of `users` (None: everyone), or None without any."""
        def oldest(names: list[str] | None) -> float | None:
            if names is None:
                row = self._conn().execute("SELECT MIN(time) FROM records").fetchone()
            elif not names:
                return None
            else:
                row = self._conn().execute(
                    f"SELECT MIN(time) FROM records WHERE user IN ({','.join('?' * len(names))})",  # noqa: S608
                    names).fetchone()
            return row[0] if row else None
        return await self._run(oldest, None if users is None else sorted(set(users)))

    async def close(self) -> None:
        if self._purging is not None:
            self._purging.cancel()
        def close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None
        await self._run(close)
