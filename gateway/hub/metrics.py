"""hpcgate's own Prometheus metrics, served with JupyterHub's on /hub/metrics.

JupyterHub serves whatever is in prometheus_client's default REGISTRY. `install()` (called by
`gateway.hub.configure`) registers hpcgate's metrics there; importing this module registers nothing.

Two kinds of source:
- events, recorded as they happen by one-line hooks: spawn phases (the spawner), watcher queries
  (`watch()`, called where the hub makes its watcher), logins (`observe_login`, the
  authenticator's `login_observer`);
- state, read at each scrape by `HubCollector` from what the hub already holds in memory: jobs by
  state and partition (the watchers), tunnels (the spawners' connection modes), directory servers
  (the authenticator), depot sizes (the depots page's size cache). A scrape never calls out.

Names start with `hpcgate_`; durations are in seconds, sizes in bytes.
"""

from __future__ import annotations

import logging
import sys
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

log = logging.getLogger("hpcgate.metrics")

# Queue waits on a busy cluster take hours, sometimes days; JupyterHub's spawn buckets stop at 600 s.
PHASE_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200,
                 14400, 28800, 43200, 86400, 172800, 345600, 604800, float("inf"))
QUERY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, float("inf"))
LOGIN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30, float("inf"))

PHASES = ("submit", "queue_wait", "server_boot", "route")
"""A spawn's phases, in order: hub work until the scheduler accepted the job; the job pending in
the queue; the job running until its launcher reported where the server listens; from there until
the server answered through its route (a tunnel or forward in those modes)."""

# Created outside any registry: install() registers them. Hooks record into them either way.
SPAWN_PHASE = Histogram(
    "hpcgate_spawn_phase_seconds",
    "Duration of each phase of a successful spawn (submit, queue_wait, server_boot, route), by "
    "partition. Buckets reach a week: queue waits on a busy cluster are long.",
    ["phase", "partition"], buckets=PHASE_BUCKETS, registry=None)
WATCHER_QUERY = Histogram(
    "hpcgate_watcher_query_seconds",
    "Duration of the watcher's batched status query (one per tick, for all of the hub's jobs), "
    "failed ones included.",
    ["scheduler", "transport"], buckets=QUERY_BUCKETS, registry=None)
WATCHER_FAILURES = Counter(
    "hpcgate_watcher_query_failures",
    "Watcher status queries that failed (the scheduler did not answer or answered nonsense); the "
    "jobs are then UNKNOWN, never gone.",
    ["scheduler", "transport"], registry=None)
LOGIN = Histogram(
    "hpcgate_login_seconds",
    "Duration of a login through the directory, by outcome: ok, refused (wrong name or password), "
    "throttled, unavailable (no directory server answered in time), error.",
    ["outcome"], buckets=LOGIN_BUCKETS, registry=None)
LOGIN_OUTCOMES = ("ok", "refused", "throttled", "unavailable", "error")

_EVENT_METRICS = (SPAWN_PHASE, WATCHER_QUERY, WATCHER_FAILURES, LOGIN)


# -- spawn phases ----------------------------------------------------------------------------------

class _Spawn:
    """One start() of one spawner: when its last phase ended, and which one."""

    __slots__ = ("done", "partition", "since", "submitted_at")

    def __init__(self) -> None:
        self.since = time.monotonic()
        self.done = -1  # index in PHASES of the last phase observed
        self.partition = ""
        self.submitted_at: float | None = None  # monotonic; None until the job is in the queue


_spawns: weakref.WeakKeyDictionary[Any, _Spawn] = weakref.WeakKeyDictionary()
_job_partitions: dict[str, str] = {}  # job id -> partition, for the jobs gauge


def spawn_phase(spawner: Any, phase: str, partition: str | None = None) -> None:
    """The spawner reached the end of `phase` ("start" begins a spawn). Each phase is observed
    once per spawn and only in order: a repeated or late one (a second RUNNING status) is ignored,
    and a phase whose predecessor was not seen counts from the last one that was.
    `partition` comes with "submit" (None: the scheduler's default)."""
    now = time.monotonic()
    if phase == "start":
        _spawns[spawner] = _Spawn()
        return
    spawn = _spawns.get(spawner)
    index = PHASES.index(phase)
    if spawn is None or index <= spawn.done:
        return
    if phase == "submit":
        spawn.partition = partition or "default"
        spawn.submitted_at = now
        job_id = getattr(spawner, "job_id", "")
        if job_id:
            _job_partitions[job_id] = spawn.partition
    SPAWN_PHASE.labels(phase, spawn.partition).observe(now - spawn.since)
    spawn.since, spawn.done = now, index
    if phase == PHASES[-1]:
        _spawns.pop(spawner, None)


# -- watchers --------------------------------------------------------------------------------------

_watchers: weakref.WeakKeyDictionary[Any, tuple[str, str]] = weakref.WeakKeyDictionary()


def watch(watcher: Any, scheduler: str, transport: str) -> Callable[[float, bool], None]:
    """Follow one of the hub's job watchers: its jobs are counted at each scrape. Returns the
    observer the watcher calls after each query with (seconds, ok)."""
    _watchers[watcher] = (scheduler, transport)
    seconds = WATCHER_QUERY.labels(scheduler, transport)
    failures = WATCHER_FAILURES.labels(scheduler, transport)

    def observe(elapsed: float, ok: bool) -> None:
        seconds.observe(elapsed)
        if not ok:
            failures.inc()
    return observe


# -- logins ----------------------------------------------------------------------------------------

def observe_login(outcome: str, seconds: float) -> None:
    """The authenticator's `login_observer`: one login attempt and how long it took."""
    LOGIN.labels(outcome if outcome in LOGIN_OUTCOMES else "error").observe(seconds)


# -- state read at scrape time ---------------------------------------------------------------------

def _hub_app() -> Any:
    """The running JupyterHub application, if this process is a hub (never imported from here:
    a scrape must not pay for importing JupyterHub)."""
    app_module = sys.modules.get("jupyterhub.app")
    if app_module is None or not app_module.JupyterHub.initialized():
        return None
    return app_module.JupyterHub.instance()


def _spawners(app: Any) -> Iterator[Any]:
    for user in list(getattr(app, "users", {}).values()):
        yield from list(getattr(user, "spawners", {}).values())


class HubCollector:
    """Gauges computed at each scrape from the hub's memory (no I/O, no scheduler call)."""

    def describe(self) -> list[Metric]:
        return list(self._families().values())

    def collect(self) -> Iterator[Metric]:
        families = self._families()
        for fill in (self._jobs, self._watcher_state, self._pending, self._tunnels,
                     self._directory, self._depots):
            try:
                fill(families)
            except Exception:  # a scrape must still answer: one broken source, one log line
                log.exception("hpcgate metrics: %s failed", fill.__name__)
        yield from families.values()

    @staticmethod
    def _families() -> dict[str, GaugeMetricFamily]:
        specs = [
            ("jobs", "hpcgate_jobs", "The hub's jobs the watchers follow, by state (PENDING, "
             "RUNNING, UNKNOWN, ...) and partition ('unknown' for jobs re-adopted after a hub "
             "restart).", ["state", "partition"]),
            ("tracked", "hpcgate_watcher_tracked_jobs", "Jobs a watcher follows.",
             ["scheduler", "transport"]),
            ("in_a_row", "hpcgate_watcher_failures_in_a_row", "The watcher's failed queries since "
             "its last good one (0: the scheduler answers, or no job is followed and nothing "
             "asked).", ["scheduler", "transport"]),
            ("last_ok", "hpcgate_watcher_last_success_timestamp_seconds", "Unix time of the "
             "watcher's last good query (0: none yet).", ["scheduler", "transport"]),
            ("pending", "hpcgate_spawn_oldest_pending_seconds", "How long the longest-waiting "
             "spawn still in the queue has waited, by partition (absent when none waits).",
             ["partition"]),
            ("tunnels", "hpcgate_tunnels", "Servers' SSH tunnels and login-node forwards, by "
             "mode (reverse, login-node) and state (up, down), as of each server's last poll.",
             ["mode", "state"]),
            ("dir_up", "hpcgate_directory_server_up", "1 if the directory server answered the last "
             "time the hub asked it (or was not asked yet), 0 if it failed.", ["server"]),
            ("depot_bytes", "hpcgate_depot_size_bytes", "Size of a depot's files, from the depots "
             "page's size cache (measured when users look at the page).", ["path"]),
            ("depot_files", "hpcgate_depot_files", "Files in a depot, from the same cache.",
             ["path"]),
            ("depot_complete", "hpcgate_depot_size_complete", "1 if the depot's last walk "
             "finished; 0 if it hit its time limit (the true size is larger).", ["path"]),
        ]
        return {key: GaugeMetricFamily(name, text, labels=labels)
                for key, name, text, labels in specs}

    @staticmethod
    def _jobs(families: dict[str, GaugeMetricFamily]) -> None:
        counts: dict[tuple[str, str], int] = {}
        tracked: set[str] = set()
        for watcher in list(_watchers):
            for job_id in watcher.tracked:
                status = watcher.latest(job_id)
                if status is None:
                    continue
                tracked.add(job_id)
                key = (status.state.value, _job_partitions.get(job_id, "unknown"))
                counts[key] = counts.get(key, 0) + 1
        for key, count in sorted(counts.items()):
            families["jobs"].add_metric(list(key), count)
        for gone in set(_job_partitions) - tracked:  # forget jobs no watcher follows any more
            _job_partitions.pop(gone, None)

    @staticmethod
    def _watcher_state(families: dict[str, GaugeMetricFamily]) -> None:
        # A policy edit makes a new watcher for the same scheduler (the old one keeps its jobs):
        # one series per label set, or Prometheus would reject the scrape's duplicates.
        merged: dict[tuple[str, str], list[float]] = {}
        for watcher, labels in list(_watchers.items()):
            health = watcher.health()
            tracked, in_a_row, last_ok = merged.setdefault(labels, [0, 0, 0])
            merged[labels] = [tracked + health["tracked"],
                              max(in_a_row, health["failures_in_a_row"] if health["tracked"] else 0),
                              max(last_ok, health["last_ok"] or 0)]
        for labels, (tracked, in_a_row, last_ok) in sorted(merged.items()):
            families["tracked"].add_metric(list(labels), tracked)
            families["in_a_row"].add_metric(list(labels), in_a_row)
            families["last_ok"].add_metric(list(labels), last_ok)

    @staticmethod
    def _pending(families: dict[str, GaugeMetricFamily]) -> None:
        now = time.monotonic()
        oldest: dict[str, float] = {}
        for spawner, spawn in list(_spawns.items()):
            if getattr(spawner, "pending", None) != "spawn":
                # The spawn failed or was stopped (JupyterHub's flag, cleared either way): it
                # must not look like a job waiting forever.
                _spawns.pop(spawner, None)
                continue
            if spawn.submitted_at is not None and spawn.done == PHASES.index("submit"):
                oldest[spawn.partition] = max(oldest.get(spawn.partition, 0.0),
                                              now - spawn.submitted_at)
        for partition, seconds in sorted(oldest.items()):
            families["pending"].add_metric([partition], seconds)

    @staticmethod
    def _tunnels(families: dict[str, GaugeMetricFamily]) -> None:
        app = _hub_app()
        if app is None:
            return
        counts = {(mode, state): 0 for mode in ("reverse", "login-node") for state in ("up", "down")}
        for spawner in _spawners(app):
            if not getattr(spawner, "job_port", 0):  # no server reported (or not hpcgate's)
                continue
            # Tunnelled modes (gateway.hub.connections.TunnelledMode) say is_down; direct has none.
            conn = spawner.connection
            is_down = getattr(conn, "is_down", None)
            if is_down is not None and conn.port:
                key = (conn.mode, "down" if is_down else "up")
                counts[key] = counts.get(key, 0) + 1
        for key, count in sorted(counts.items()):
            families["tunnels"].add_metric(list(key), count)

    @staticmethod
    def _directory(families: dict[str, GaugeMetricFamily]) -> None:
        app = _hub_app()
        health = getattr(getattr(app, "authenticator", None), "directory_health", None)
        if health is None:
            return
        for server, up in sorted(health().items()):
            families["dir_up"].add_metric([server], 1 if up else 0)

    @staticmethod
    def _depots(families: dict[str, GaugeMetricFamily]) -> None:
        from gateway.hub import depots_page

        cache = depots_page.cached_sizes()
        if cache is None:
            return
        for path, size in sorted(cache.known().items()):
            if size.error:  # not provisioned, unreadable: no size to show
                continue
            families["depot_bytes"].add_metric([path], size.bytes)
            families["depot_files"].add_metric([path], size.files)
            families["depot_complete"].add_metric([path], 1 if size.complete else 0)


_collector = HubCollector()


def install(registry: CollectorRegistry = REGISTRY) -> None:
    """Register hpcgate's metrics in `registry` (JupyterHub serves the default one); twice is
    harmless. Login outcomes are created at zero, so that rates and alerts see them at once."""
    for metric in (*_EVENT_METRICS, _collector):
        try:
            registry.register(metric)
        except ValueError:  # already there (configure() ran twice in this process)
            pass
    for outcome in LOGIN_OUTCOMES:
        LOGIN.labels(outcome)
