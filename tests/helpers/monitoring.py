"""The example monitoring files (site_configs/monitoring/) and what their expressions name."""

from __future__ import annotations

import json
import re
import subprocess

import yaml

from tests.helpers.paths import REPO

MONITORING = REPO / "site_configs" / "monitoring"
RULES = MONITORING / "alerts.yaml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
METRIC_NAME = re.compile(r"\b((?:hpcgate|jupyterhub)_[a-zA-Z0-9_]+)\b")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """Debian's promtool (from the prometheus package `make setup` installs)."""
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60)


def dashboard_exprs() -> list[str]:
    """Every query of the Grafana dashboard: its panels' and its variables'."""
    doc = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in doc["templating"]["list"] if v.get("definition")]
    return exprs


def rule_exprs() -> dict[str, str]:
    """Alert name -> its expression."""
    doc = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r["expr"] for g in doc["groups"] for r in g["rules"]}
