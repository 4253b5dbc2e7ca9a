"""hpcgate's metrics as an admin's Prometheus sees them: a real Prometheus (Debian's) scrapes the
lab hub's /hub/metrics with a `read:metrics` token from a file, and the test reads the values back
through Prometheus's query API after real logins (LDAP) and a real spawn (Slurm, reverse tunnel).

Prometheus failing to start fails these tests (never a skip: it is installed by `make setup`)."""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.lab.procs import LabError
from gateway.lab.prometheus import LabPrometheus, metrics_service_config
from tests.helpers.hub import Hub, running_hub
from tests.helpers.lab import passwords
from tests.helpers.monitoring import RULES, dashboard_exprs
from tests.helpers.paths import REPO
from tests.helpers.portal import Portal

pytestmark = pytest.mark.lab

SPAWN = {"partition": "long", "walltime": "10m", "cpus": "1", "memory": "1G"}


DEPOT_BYTES = 12345


def depot_path(lab: dict) -> Path:
    return Path(lab["dir"]) / "depots" / "reference-calls"


class MetricsHub(Hub):
    metrics_token: str
    portal: Portal


@pytest.fixture(scope="module")
def hub(lab: dict) -> Iterator[MetricsHub]:
    token = secrets.token_hex(24)
    with running_hub(lab, "metrics", hub_class=MetricsHub, ldap_login=True,
                     extra_config=metrics_service_config(token)) as h:
        h.metrics_token = token
        # The depots page's size cache feeds hpcgate_depot_*: one depot, provisioned afresh by the
        # admin's command (test_depots does the same), with one file of a known size.
        shutil.rmtree(depot_path(lab), ignore_errors=True)
        created = subprocess.run([sys.executable, "-m", "gateway.cli", "depot", "create",
                                  "reference-calls", "--policy", str(h.hub.policy_file)],
                                 capture_output=True, text=True, timeout=120, cwd=REPO)
        assert created.returncode == 0, created.stdout + created.stderr
        (depot_path(lab) / "calls.txt").write_bytes(b"x" * DEPOT_BYTES)
        h.portal = Portal(h.hub.url)
        status, url, body = h.portal.login("alice", passwords(lab)["alice"])
        assert status == 200 and "/hub/login" not in url, Portal.login_error(body)
        try:
            yield h
        finally:
            h.stop_quietly("alice")


@pytest.fixture(scope="module")
def prom(hub: MetricsHub) -> Iterator[LabPrometheus]:
    state = Path("/var/tmp") / f"hpcgate-prometheus-{uuid.uuid4().hex[:8]}"
    server = LabPrometheus(state, target=f"127.0.0.1:{hub.hub.proxy_port}", token=hub.metrics_token,
                           rule_files=(str(RULES),), lab_dir=hub.lab["dir"])
    try:
        try:
            server.start()
        except LabError as err:
            pytest.fail(f"Prometheus could not start: {err}", pytrace=False)
        yield server
    finally:
        server.stop()
        shutil.rmtree(state, ignore_errors=True)


def eventually(prom: LabPrometheus, expr: str, check: Callable[[list[dict[str, Any]]], bool],
               timeout: float = 60) -> list[dict[str, Any]]:
    """The query's result once `check` accepts it (Prometheus scrapes every second)."""
    deadline = time.monotonic() + timeout
    while True:
        result = prom.query(expr)
        if check(result) or time.monotonic() > deadline:
            assert check(result), f"{expr}: {result}; targets: {prom.targets()}"
            return result
        time.sleep(0.5)


def values(result: list[dict[str, Any]]) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted((k, v) for k, v in r["metric"].items() if k not in ("__name__", "instance", "job"))):
            float(r["value"][1]) for r in result}


def test_metrics_need_the_read_metrics_token_and_carry_help(hub: MetricsHub) -> None:
    status, _ = hub.get("/hub/metrics")  # the tests' service: no read:metrics scope
    assert status == 403
    old = hub.hub.service_token
    hub.hub.service_token = hub.metrics_token
    try:
        status, text = hub.get("/hub/metrics")
    finally:
        hub.hub.service_token = old
    assert status == 200
    helps = dict(re.findall(r"^# HELP (hpcgate_\w+) (.+)$", text, re.M))
    for name in ("hpcgate_spawn_phase_seconds", "hpcgate_watcher_query_seconds",
                 "hpcgate_watcher_query_failures_total", "hpcgate_jobs", "hpcgate_tunnels",
                 "hpcgate_directory_server_up", "hpcgate_login_seconds", "hpcgate_depot_size_bytes"):
        assert len(helps.get(name, "")) > 20, (name, sorted(helps))
    # Next to JupyterHub's own, on the same page.
    assert "# HELP jupyterhub_server_spawn_duration_seconds" in text


def test_prometheus_reads_back_spawn_watcher_login_and_directory(hub: MetricsHub,
                                                                 prom: LabPrometheus) -> None:
    # The token is in a file of mode 0600, never in Prometheus's argv or its configuration.
    assert hub.metrics_token not in Path(f"/proc/{prom.proc.pid}/cmdline").read_text()
    assert hub.metrics_token not in prom.config.read_text()
    assert prom.token_file.stat().st_mode & 0o077 == 0
    eventually(prom, 'up{job="jupyterhub"}', lambda r: values(r) == {(): 1.0})
    # A wrong password and alice's login (in the fixture), through the directory.
    status, _, _ = Portal(hub.hub.url).login("alice", "not-her-password")
    assert status == 403
    logins = values(eventually(prom, "hpcgate_login_seconds_count",
                               lambda r: values(r).get((("outcome", "refused"),), 0) >= 1))
    assert logins[(("outcome", "ok"),)] >= 1 and logins[(("outcome", "unavailable"),)] == 0
    directory = values(eventually(prom, "hpcgate_directory_server_up", lambda r: len(r) == 1))
    assert list(directory.values()) == [1.0]
    [(labels, _)] = directory.items()
    assert dict(labels)["server"] == hub.lab["ldap"]["uri"]

    status, body = hub.spawn("alice", SPAWN)
    assert status in (201, 202), body
    hub.wait_ready("alice", timeout=180)

    # Every phase of the spawn, once, labelled with the partition the job went to.
    counts = values(eventually(
        prom, "hpcgate_spawn_phase_seconds_count",
        lambda r: values(r).get((("partition", "long"), ("phase", "route")), 0) >= 1))
    for phase in ("submit", "queue_wait", "server_boot", "route"):
        assert counts[(("partition", "long"), ("phase", phase))] == 1, counts
    # The phases add up to no more than the whole spawn took as JupyterHub measured it.
    phases = values(prom.query("hpcgate_spawn_phase_seconds_sum"))
    print("spawn phases (s):", {dict(k)["phase"]: round(v, 3) for k, v in phases.items()})
    total = sum(phases.values())
    [hub_spawn] = values(prom.query('jupyterhub_server_spawn_duration_seconds_sum'
                                    '{status="success"}')).values()
    assert 0 < total <= hub_spawn + 0.5, (total, hub_spawn)
    # The day-long buckets are there: JupyterHub's stop at 600 s.
    buckets = {float(r["metric"]["le"]) for r in prom.query(
        'hpcgate_spawn_phase_seconds_bucket{phase="queue_wait"}')}
    assert max(b for b in buckets if b != float("inf")) >= 86400

    watcher = values(eventually(prom, "hpcgate_watcher_query_seconds_count",
                                lambda r: sum(values(r).values()) > 0))
    assert list(watcher) == [(("scheduler", "slurm"), ("transport", "sudo"))], watcher
    failures = values(prom.query("hpcgate_watcher_query_failures_total"))
    assert failures == {(("scheduler", "slurm"), ("transport", "sudo")): 0.0}
    assert values(prom.query("hpcgate_watcher_failures_in_a_row")) == {
        (("scheduler", "slurm"), ("transport", "sudo")): 0.0}
    jobs = values(eventually(prom, "hpcgate_jobs",
                             lambda r: values(r).get((("partition", "long"),
                                                      ("state", "RUNNING")), 0) == 1))
    assert sum(jobs.values()) == 1, jobs  # only the hub's own jobs, none of the lab's others
    tunnels = values(eventually(prom, "hpcgate_tunnels", lambda r: bool(r)))
    assert tunnels[(("mode", "reverse"), ("state", "up"))] == 1, tunnels
    assert tunnels[(("mode", "reverse"), ("state", "down"))] == 0, tunnels

    hub.stop("alice")
    eventually(prom, "hpcgate_jobs", lambda r: not values(r))  # the stopped job is no longer followed
    tunnels = values(eventually(prom, "hpcgate_tunnels", lambda r: bool(r)))
    assert tunnels[(("mode", "reverse"), ("state", "up"))] == 0, tunnels


def test_depot_sizes_come_from_the_depots_page_cache(hub: MetricsHub, prom: LabPrometheus) -> None:
    status, _, _ = hub.portal.request("/hub/depots")  # starts the walk of alice's depots
    assert status == 200
    key = (("path", str(depot_path(hub.lab))),)
    sizes = values(eventually(prom, "hpcgate_depot_size_bytes", lambda r: key in values(r)))
    assert sizes[key] == DEPOT_BYTES
    assert values(prom.query("hpcgate_depot_files"))[key] == 1
    assert values(prom.query("hpcgate_depot_size_complete"))[key] == 1


def test_prometheus_evaluates_the_example_rules_and_dashboard(hub: MetricsHub,
                                                              prom: LabPrometheus) -> None:
    """The example alert rules, loaded by this Prometheus, evaluate without error on the hub's
    real series, none of them firing on a healthy lab; every dashboard query is accepted."""
    def evaluated(groups: list[dict[str, Any]]) -> bool:
        rules = [r for g in groups for r in g["rules"]]
        return bool(rules) and all(r.get("lastEvaluation", "").startswith("20") for r in rules)

    deadline = time.monotonic() + 30
    while not evaluated(groups := prom.api("rules")["groups"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    rules = {r["name"]: r for g in groups for r in g["rules"]}
    assert "HpcgateSchedulerUnreachable" in rules and "HpcgateDirectoryDown" in rules
    for name, rule in rules.items():
        assert rule["health"] == "ok", (name, rule.get("lastError"))
        assert rule["state"] == "inactive", (name, rule.get("alerts"))
    for expr in dashboard_exprs():
        grafana = expr.replace("$__rate_interval", "1m").replace("$partition", ".*")
        if grafana.startswith("label_values("):  # Grafana's own function: ask for the series
            grafana = grafana.removeprefix("label_values(").split(",")[0]
        prom.query(grafana)  # LabError if Prometheus refuses the expression
