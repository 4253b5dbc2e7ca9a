"""gateway.hub.metrics without a hub: registration, the spawn phases' order, the watcher's
observer on a real JobWatcher, and what a scrape shows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.hub import metrics
from schedulers.model import JobState, JobStatus
from schedulers.registry import SchedulerSettings, make_scheduler
from schedulers.watcher import JobWatcher
from tests.helpers.paths import REPO


def scrape(registry: CollectorRegistry) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """sample name -> {sorted labels: value}, parsed from the exposition text as Prometheus would."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def registry() -> CollectorRegistry:
    reg = CollectorRegistry()
    metrics.install(reg)
    metrics.install(reg)  # twice is harmless
    return reg


def test_importing_registers_nothing_in_the_default_registry() -> None:
    code = ("import gateway.hub.metrics, gateway.hub.spawner\n"
            "from prometheus_client import REGISTRY\n"
            "print(sorted(n for n in REGISTRY._names_to_collectors if n.startswith('hpcgate')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         check=True).stdout.strip()
    assert out == "[]"


def test_every_metric_is_named_hpcgate_and_has_help() -> None:
    text = generate_latest(registry()).decode()
    families = list(text_string_to_metric_families(text))
    ours = {f.name: f for f in families}
    assert {"hpcgate_spawn_phase_seconds", "hpcgate_watcher_query_seconds",
            "hpcgate_watcher_query_failures", "hpcgate_jobs", "hpcgate_tunnels",
            "hpcgate_directory_server_up", "hpcgate_login_seconds",
            "hpcgate_depot_size_bytes"} <= set(ours)
    for name, family in ours.items():
        assert name.startswith("hpcgate_") and len(family.documentation) > 20, name
    # Login outcomes exist at zero before any login: alert expressions see them at once.
    assert scrape(registry())["hpcgate_login_seconds_count"][(("outcome", "unavailable"),)] == 0


class _Spawner:
    """Stands for a spawner: the hooks need a weak-referenceable object with a job id, and
    JupyterHub's `pending` ("spawn" while a spawn is under way)."""

    job_id = ""
    pending: str | None = "spawn"


def test_spawn_phases_are_observed_once_each_and_in_order() -> None:
    reg = registry()
    spawner = _Spawner()
    metrics.spawn_phase(spawner, "queue_wait")  # before "start": not a spawn we follow
    metrics.spawn_phase(spawner, "start")
    spawner.job_id = "4242"
    metrics.spawn_phase(spawner, "submit", "gpu-long")
    metrics.spawn_phase(spawner, "queue_wait")
    metrics.spawn_phase(spawner, "queue_wait")  # a second RUNNING status
    metrics.spawn_phase(spawner, "server_boot")
    metrics.spawn_phase(spawner, "submit", "other")  # late and out of order
    metrics.spawn_phase(spawner, "route")
    counts = scrape(reg)["hpcgate_spawn_phase_seconds_count"]
    for phase in metrics.PHASES:
        assert counts[(("partition", "gpu-long"), ("phase", phase))] >= 1
    assert (("partition", "other"), ("phase", "submit")) not in counts
    before = dict(counts)
    metrics.spawn_phase(spawner, "route")  # the spawn is over: nothing more is counted
    assert scrape(reg)["hpcgate_spawn_phase_seconds_count"] == before
    buckets = scrape(reg)["hpcgate_spawn_phase_seconds_bucket"]
    assert max(float(dict(k)["le"]) for k in buckets if dict(k)["le"] != "+Inf") >= 7 * 86400


def test_a_default_partition_is_labelled_default_and_waiting_spawns_show() -> None:
    reg = registry()
    spawner = _Spawner()
    metrics.spawn_phase(spawner, "start")
    metrics.spawn_phase(spawner, "submit", None)
    pending = scrape(reg)["hpcgate_spawn_oldest_pending_seconds"]
    assert pending[(("partition", "default"),)] >= 0
    metrics.spawn_phase(spawner, "queue_wait")
    assert (("partition", "default"),) not in scrape(reg).get("hpcgate_spawn_oldest_pending_seconds",
                                                              {})


def test_a_failed_spawn_stops_counting_as_waiting() -> None:
    reg = registry()
    spawner = _Spawner()
    metrics.spawn_phase(spawner, "start")
    metrics.spawn_phase(spawner, "submit", "stuck")
    assert (("partition", "stuck"),) in scrape(reg)["hpcgate_spawn_oldest_pending_seconds"]
    spawner.pending = None  # JupyterHub cleared its flag: start() failed or the user cancelled
    assert (("partition", "stuck"),) not in scrape(reg).get("hpcgate_spawn_oldest_pending_seconds",
                                                            {})


async def test_the_watcher_reports_queries_failures_and_jobs(tmp_path: Path) -> None:
    # A real Slurm adapter whose PATH has no squeue: every query fails as on a hub host set up
    # wrongly. (Good queries are counted in tests/e2e/test_metrics.py, on the lab's Slurm.)
    reg = registry()
    scheduler = make_scheduler(SchedulerSettings(kind="slurm", transport="local",
                                                 command_path=str(tmp_path)))
    watcher = JobWatcher(scheduler)
    watcher.on_query = metrics.watch(watcher, "slurm", "local")
    watcher._latest["7"] = JobStatus("7", JobState.PENDING)  # tracked, without starting the loop
    metrics._job_partitions["7"] = "debug"
    await watcher.tick()
    await watcher.tick()
    labels = (("scheduler", "slurm"), ("transport", "local"))
    seen = scrape(reg)
    assert seen["hpcgate_watcher_query_seconds_count"][labels] == 2
    assert seen["hpcgate_watcher_query_failures_total"][labels] == 2
    assert seen["hpcgate_watcher_failures_in_a_row"][labels] == 2
    # A failed query makes the job UNKNOWN (never gone); it is still counted, in its partition.
    assert seen["hpcgate_jobs"][(("partition", "debug"), ("state", "UNKNOWN"))] == 1
    watcher.untrack("7")
    assert not scrape(reg).get("hpcgate_jobs")
    assert "7" not in metrics._job_partitions  # forgotten once no watcher follows it


async def test_two_watchers_of_one_scheduler_give_one_series_each(tmp_path: Path) -> None:
    """After a policy edit the hub has an old and a new watcher for the same scheduler: duplicate
    series would make Prometheus reject the whole scrape."""
    reg = registry()
    settings = SchedulerSettings(kind="pbs", transport="local", command_path=str(tmp_path))
    watchers = [JobWatcher(make_scheduler(settings)) for _ in range(2)]
    for n, watcher in enumerate(watchers):
        watcher.on_query = metrics.watch(watcher, "pbs", "local")
        watcher._latest[f"{n}.server"] = JobStatus(f"{n}.server", JobState.PENDING)
        await watcher.tick()
    labels = (("scheduler", "pbs"), ("transport", "local"))
    text = generate_latest(reg).decode()
    assert text.count('hpcgate_watcher_tracked_jobs{scheduler="pbs",transport="local"}') == 1
    seen = scrape(reg)
    assert seen["hpcgate_watcher_tracked_jobs"][labels] == 2
    assert seen["hpcgate_watcher_failures_in_a_row"][labels] == 1
    assert seen["hpcgate_watcher_query_failures_total"][labels] == 2
    for n, watcher in enumerate(watchers):
        watcher.untrack(f"{n}.server")
    # Following nothing, a watcher asks nothing: its old failures no longer say "unreachable".
    assert scrape(reg)["hpcgate_watcher_failures_in_a_row"][labels] == 0
