"""`hpcgate jobs orphans`: jobs the gateway submitted that no server of the hub owns.

A job is the gateway's when its name starts with `hpcgate-`; it is owned when a spawner's saved
state in the hub's database names its id. Orphans burn allocation for nobody: list them, and with
`--cancel` cancel them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from traitlets.config import Config, PyFileConfigLoader

from gateway.hub.scheduling import scheduler_settings
from schedulers.errors import SchedulerError
from schedulers.model import JobStatus
from schedulers.registry import SchedulerSettings, make_runner, make_scheduler

JOB_PREFIX = "hpcgate-"


def load_hub_config(path: str) -> Config:
    config_path = Path(path).resolve()
    return PyFileConfigLoader(config_path.name, str(config_path.parent)).load_config()


def owned_job_ids(db_url: str) -> set[str]:
    """Job ids named in any spawner's saved state."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sqlalchemy.text("SELECT state FROM spawners")).fetchall()
    finally:
        engine.dispose()
    owned = set()
    for (state,) in rows:
        if isinstance(state, str):
            state = json.loads(state or "{}")
        if isinstance(state, dict) and state.get("job_id"):
            owned.add(str(state["job_id"]))
    return owned


def _name_and_user(status: JobStatus) -> tuple[str, str]:
    raw = status.raw or {}
    if "Job_Name" in raw:  # PBS: the owner is user@submit-host
        return str(raw.get("Job_Name", "")), str(raw.get("Job_Owner", "")).split("@", 1)[0]
    return str(raw.get("name", "")), str(raw.get("user_name", ""))


def orphan_rows(jobs: dict[str, JobStatus], owned: set[str],
                prefix: str = JOB_PREFIX) -> list[dict[str, Any]]:
    """The gateway's unfinished jobs (by name prefix) whose id no spawner state names."""
    rows = []
    for s in jobs.values():
        name, user = _name_and_user(s)
        if name.startswith(prefix) and not s.is_final and s.job_id not in owned:
            rows.append({"job_id": s.job_id, "user": user, "name": name, "state": s.state.value,
                         "node": s.node})
    return rows


@contextlib.asynccontextmanager
async def _scheduler(settings: SchedulerSettings) -> AsyncIterator[Any]:
    """The site's adapter, its runner's connections closed afterwards."""
    runner = make_runner(settings)
    scheduler = make_scheduler(settings, runner)
    try:
        yield scheduler
    finally:
        await runner.close()
        if hasattr(scheduler, "close"):  # the REST adapter's HTTP session
            await scheduler.close()


async def find_orphans(settings: SchedulerSettings, db_url: str) -> list[dict[str, Any]]:
    async with _scheduler(settings) as scheduler:
        jobs = await scheduler.list_jobs()
    return orphan_rows(jobs, owned_job_ids(db_url))


async def cancel_jobs(settings: SchedulerSettings, job_ids: list[str]) -> None:
    async with _scheduler(settings) as scheduler:
        await scheduler.cancel(job_ids)


def main(config_file: str, cancel: bool, as_json: bool) -> int:
    config = load_hub_config(config_file)
    db_url = config.JupyterHub.get("db_url", "sqlite:///jupyterhub.sqlite")
    if db_url.startswith("sqlite:///") and not db_url.startswith("sqlite:////"):
        db_url = "sqlite:///" + str(Path(config_file).resolve().parent / db_url[len("sqlite:///"):])
    from gateway.policy import PolicyFileError, load_policy

    # The scheduler and how to reach it come from the site policy, as in the hub.
    policy_file = config.BatchSpawner.get("policy_file", "/etc/hpcgate/site.yaml")
    try:
        settings = scheduler_settings(load_policy(policy_file).cluster)
        orphans = asyncio.run(find_orphans(settings, db_url))
    except PolicyFileError as err:
        print(f"hpcgate jobs orphans: the site policy cannot be read:\n{err}", file=sys.stderr)
        return 2
    except SchedulerError as err:
        print(f"hpcgate jobs orphans: {err.message}", file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps(orphans, indent=2))
    elif not orphans:
        print("No orphan jobs: every running hpcgate job belongs to a server of the hub.")
    else:
        print(f"{len(orphans)} job(s) submitted by hpcgate that no server owns:")
        for o in orphans:
            print(f"  job {o['job_id']:<8} {o['user']:<12} {o['state']:<9} {o['node'] or '-':<8} "
                  f"{o['name']}")
    if cancel and orphans:
        try:
            asyncio.run(cancel_jobs(settings, [o["job_id"] for o in orphans]))
        except SchedulerError as err:
            print(f"hpcgate jobs orphans: cancelling failed: {err.message}", file=sys.stderr)
            return 2
        print(f"Cancelled {len(orphans)} job(s).")
    return 1 if orphans and not cancel else 0
