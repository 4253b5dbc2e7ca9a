"""How the hub reaches its scheduler: one adapter, runner and watcher per cluster section.

Every spawner of a hub shares them, so the hub asks the scheduler once per tick for all jobs.
Everything comes from the site policy's `cluster` section (`scheduler_settings`); `hpcgate jobs
orphans` and `hpcgate check-config` build theirs from the same function.
"""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.hub import metrics
from gateway.policy.model import Cluster
from schedulers.registry import SchedulerSettings, make_runner, make_scheduler
from schedulers.runners import Runner
from schedulers.watcher import JobWatcher


def scheduler_settings(cluster: Cluster) -> SchedulerSettings:
    """The policy's `cluster` section as the schedulers package takes it."""
    ssh, rest = cluster.ssh, cluster.rest
    return SchedulerSettings(
        kind=cluster.scheduler, transport=cluster.transport,
        environment=dict(cluster.environment), command_path=cluster.command_path,
        command_timeout=cluster.command_timeout.total_seconds(),
        ssh_host=ssh.host if ssh else "", ssh_port=ssh.port if ssh else 22,
        ssh_known_hosts=ssh.known_hosts if ssh else None,
        ssh_key_template=ssh.key_template if ssh else None,
        ssh_service_user=ssh.service_user if ssh else None,
        rest_url=rest.url if rest else "", rest_api_version=rest.api_version if rest else "v0.0.38",
        jwt_key_file=rest.jwt_key_file if rest else None,
        jobcomp_file=cluster.jobcomp_file, use_sacct=cluster.use_sacct)


_shared: dict[tuple[Any, ...], tuple[Any, Runner, JobWatcher, asyncio.AbstractEventLoop]] = {}


def shared(cluster: Cluster) -> tuple[Any, Runner, JobWatcher]:
    """The hub's one scheduler, runner (for commands as a user) and watcher for `cluster`.

    A policy edit that changes the cluster section makes new ones at the next call; jobs tracked
    by the old watcher are tracked again by poll() through the new one.
    """
    loop = asyncio.get_running_loop()
    settings = scheduler_settings(cluster)
    key = (*(tuple(sorted(v.items())) if isinstance(v, dict) else v
             for v in vars(settings).values()), cluster.poll_starting, cluster.poll_steady)
    entry = _shared.get(key)
    if entry is None or entry[3] is not loop:
        runner = make_runner(settings)
        scheduler = make_scheduler(settings, runner)
        watcher = JobWatcher(scheduler, fast_interval=cluster.poll_starting,
                             slow_interval=cluster.poll_steady)
        watcher.on_query = metrics.watch(watcher, settings.kind, settings.transport)
        entry = (scheduler, runner, watcher, loop)
        _shared[key] = entry
    return entry[0], entry[1], entry[2]


def health() -> list[dict[str, object]]:
    """Each of the hub's watchers: which scheduler, and how its last queries went."""
    loop = asyncio.get_running_loop()
    return [{"scheduler": key[0], "transport": key[1], **watcher.health()}
            for key, (_, _, watcher, on) in _shared.items() if on is loop]
