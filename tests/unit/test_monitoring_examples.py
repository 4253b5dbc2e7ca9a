"""site_configs/monitoring/: the alert rules pass `promtool check rules` and fire in promtool's own
rule tests; the Grafana dashboard parses and names only metrics the hub exports.

promtool comes with Debian's prometheus package (`make setup`): missing, these tests fail."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.hub import metrics
from tests.helpers.monitoring import (
    DASHBOARD,
    METRIC_NAME,
    RULES,
    dashboard_exprs,
    promtool,
    rule_exprs,
)

_SUFFIXES = {"histogram": ("_bucket", "_count", "_sum", "_created"),
             "counter": ("_total", "_created"), "gauge": ("",), "summary": ("_count", "_sum")}


def exported_names() -> set[str]:
    """Every series name hpcgate and JupyterHub export (as on /hub/metrics)."""
    import jupyterhub.metrics  # noqa: F401 - registers JupyterHub's own in the default registry
    from prometheus_client import REGISTRY

    reg = CollectorRegistry()
    metrics.install(reg)
    names: set[str] = set()
    for registry in (reg, REGISTRY):
        for family in text_string_to_metric_families(generate_latest(registry).decode()):
            names.update(family.name + s for s in _SUFFIXES.get(family.type, ("",)))
    return names


def test_promtool_accepts_the_alert_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rule_exprs())} rules found" in result.stdout


def test_the_alerts_fire_on_the_series_they_watch_and_not_before(tmp_path: Path) -> None:
    """promtool's rule unit tests: each alert against a short made-up history of its metrics."""
    labels = {"scheduler": "slurm", "transport": "cli"}
    sel = '{scheduler="slurm",transport="cli"}'
    tests = [
        {"interval": "1m",
         "input_series": [{"series": f"hpcgate_watcher_failures_in_a_row{sel}",
                           "values": "0 0 3 4 5 6 7 8"}],
         "alert_rule_test": [
             {"eval_time": "3m", "alertname": "HpcgateSchedulerUnreachable", "exp_alerts": []},
             {"eval_time": "6m", "alertname": "HpcgateSchedulerUnreachable",
              "exp_alerts": [{"exp_labels": {"severity": "critical", **labels}, "exp_annotations": {
                  "summary": "The hub's slurm (cli) does not answer",
                  "description": "7 status queries in a row failed. Check the controller "
                                 "(slurmctld, slurmrestd or the PBS server) and "
                                 "/hub/api/hpcgate/health for the error."}}]}]},
        {"interval": "1m",
         "input_series": [
             {"series": f"hpcgate_watcher_query_seconds_count{sel}", "values": "0+60x40"},
             {"series": f"hpcgate_watcher_query_failures_total{sel}", "values": "0x10 0+30x30"}],
         "alert_rule_test": [
             {"eval_time": "10m", "alertname": "HpcgateWatcherFailing", "exp_alerts": []},
             {"eval_time": "35m", "alertname": "HpcgateWatcherFailing",
              "exp_alerts": [{"exp_labels": {"severity": "warning", **labels}, "exp_annotations": {
                  "summary": "50% of the watcher's queries fail",
                  "description": "See the hub's log (hpcgate.watcher) for the scheduler's error "
                                 "messages."}}]}]},
        {"interval": "1m",
         "input_series": [
             {"series": 'hpcgate_spawn_oldest_pending_seconds{partition="long"}',
              "values": "3000+60x20"},
             {"series": 'hpcgate_spawn_oldest_pending_seconds{partition="debug"}',
              "values": "10x20"}],
         "alert_rule_test": [
             {"eval_time": "5m", "alertname": "HpcgateSpawnQueueWaitLong", "exp_alerts": []},
             {"eval_time": "16m", "alertname": "HpcgateSpawnQueueWaitLong",
              "exp_alerts": [{"exp_labels": {"severity": "warning", "partition": "long"},
                              "exp_annotations": {
                  "summary": "A server has waited 1h 6m 0s in partition long's queue",
                  "description": "The partition is full or its limits cannot be met; see "
                                 "`squeue -p long`."}}]}]},
        {"interval": "1m",
         "input_series": [
             {"series": 'hpcgate_tunnels{mode="reverse",state="down"}', "values": "0 0 2x10"},
             {"series": 'hpcgate_tunnels{mode="reverse",state="up"}', "values": "5 5 3x10"}],
         "alert_rule_test": [
             {"eval_time": "8m", "alertname": "HpcgateTunnelsDown",
              "exp_alerts": [{"exp_labels": {"severity": "warning", "mode": "reverse"},
                              "exp_annotations": {
                  "summary": "2 reverse tunnel(s) down",
                  "description": "Users' servers cannot be reached. Reverse tunnels: the hub "
                                 "host's sshd and the tunnel account; login-node forwards: the "
                                 "login node and the hub's key."}}]}]},
        {"interval": "1m",
         "input_series": [
             {"series": 'hpcgate_directory_server_up{server="ldap://a"}', "values": "1 1 0x20"},
             {"series": 'hpcgate_directory_server_up{server="ldap://b"}', "values": "1x5 0x20"}],
         "alert_rule_test": [
             {"eval_time": "4m", "alertname": "HpcgateDirectoryDown", "exp_alerts": []},
             {"eval_time": "8m", "alertname": "HpcgateDirectoryDown",
              "exp_alerts": [{"exp_labels": {"severity": "critical"}, "exp_annotations": {
                  "summary": "No directory server answers: nobody can log in"}}]}]},
    ]
    spec = tmp_path / "alerts_test.yaml"
    spec.write_text(yaml.safe_dump({"rule_files": [str(RULES)], "evaluation_interval": "1m",
                                    "tests": tests}, sort_keys=False))
    result = promtool("test", "rules", str(spec))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_expression_names_metrics_that_exist() -> None:
    exported = exported_names()
    assert "hpcgate_spawn_phase_seconds_bucket" in exported  # the lookup itself works
    assert "jupyterhub_running_servers" in exported
    exprs = {**{f"dashboard #{i}": e for i, e in enumerate(dashboard_exprs())}, **rule_exprs()}
    for where, expr in exprs.items():
        names = set(METRIC_NAME.findall(expr))
        assert names or expr.startswith("up{"), (where, expr)  # else: a typo'd name matched nothing
        assert names <= exported, (where, sorted(names - exported))


def test_the_dashboard_parses_and_shows_every_area() -> None:
    doc = json.loads(DASHBOARD.read_text())
    assert doc["uid"] and doc["title"] and doc["panels"]
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    used = {n for e in dashboard_exprs() for n in METRIC_NAME.findall(e)}
    for family in ("hpcgate_spawn_phase_seconds_bucket", "hpcgate_spawn_oldest_pending_seconds",
                   "hpcgate_watcher_query_seconds_bucket", "hpcgate_watcher_query_failures_total",
                   "hpcgate_jobs", "hpcgate_tunnels", "hpcgate_directory_server_up",
                   "hpcgate_login_seconds_bucket", "hpcgate_depot_size_bytes"):
        assert family in used, family
