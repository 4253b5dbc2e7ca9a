"""A real Prometheus (Debian's `prometheus`) for the lab: scrapes a lab hub's /hub/metrics.

Everything lives in one state directory (config, token file, TSDB, log); it listens on 127.0.0.1
on a free port. JupyterHub 6 wants a token with the `read:metrics` scope for /hub/metrics: the
token reaches Prometheus in a file (`credentials_file`), never on its command line.

    with LabPrometheus(state_dir, target="127.0.0.1:8000", token=token) as prom:
        prom.query('hpcgate_jobs')
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from gateway.lab.procs import LAB_MARK, LabError, free_port, stop_pids

PROMETHEUS = "/usr/bin/prometheus"


def metrics_service_config(token: str, name: str = "prometheus") -> str:
    """jupyterhub_config.py lines for a service whose token may read /hub/metrics, nothing else
    (append to a config that already sets c.JupyterHub.services and load_roles)."""
    return f"""
c.JupyterHub.services.append({{"name": {name!r}, "api_token": {token!r}}})
c.JupyterHub.load_roles.append({{"name": {name + "-metrics"!r}, "scopes": ["read:metrics"],
                                 "services": [{name!r}]}})
"""


def scrape_config(target: str, token_file: Path, metrics_path: str = "/hub/metrics",
                  interval: str = "1s", rule_files: tuple[str, ...] = ()) -> str:
    """prometheus.yml for one hub (JSON is YAML: no quoting surprises in paths)."""
    doc: dict[str, Any] = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [{
            "job_name": "jupyterhub",
            "metrics_path": metrics_path,
            "scrape_timeout": interval,
            "authorization": {"type": "Bearer", "credentials_file": str(token_file)},
            "static_configs": [{"targets": [target]}],
        }],
    }
    if rule_files:
        doc["rule_files"] = list(rule_files)
    return json.dumps(doc, indent=2) + "\n"


class LabPrometheus:
    """One prometheus process in `state_dir`; `start()`, `query()`, `stop()` (or `with`)."""

    def __init__(self, state_dir: Path, target: str, token: str, metrics_path: str = "/hub/metrics",
                 interval: str = "1s", rule_files: tuple[str, ...] = (),
                 lab_dir: str | Path | None = None):
        """`lab_dir`: the lab this Prometheus belongs to; `hpcgate lab down` ends it too, should
        the process that started it die without stopping it."""
        self.lab_dir = lab_dir
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.token_file = self.dir / "hub-token"
        self.token_file.write_text(token)
        self.token_file.chmod(0o600)
        self.config = self.dir / "prometheus.yml"
        self.config.write_text(scrape_config(target, self.token_file, metrics_path, interval,
                                             rule_files))
        self.log = self.dir / "prometheus.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> None:
        binary = shutil.which("prometheus") or PROMETHEUS
        if not os.access(binary, os.X_OK):
            raise LabError("prometheus is not installed: `make setup` installs Debian's package")
        self.port = free_port()
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [binary, f"--config.file={self.config}", f"--storage.tsdb.path={self.dir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1d",
                 "--log.level=warn"],
                cwd=self.dir, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, **({LAB_MARK: str(self.lab_dir)} if self.lab_dir else {})})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log.read_text(errors="replace")[-2000:]
                self.proc = None
                raise LabError(f"prometheus exited at start; its log {self.log}:\n{tail}")
            if self._ready():
                return
            time.sleep(0.2)
        self.stop()
        raise LabError(f"prometheus was not ready within {timeout:g} s; see {self.log}")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:  # noqa: S310
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/PATH; the `data` of a success, LabError with Prometheus's error otherwise."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - loopback http
                doc = json.loads(resp.read())
        except urllib.error.HTTPError as err:
            doc = json.loads(err.read() or b"{}")
        if doc.get("status") != "success":
            raise LabError(f"prometheus /api/v1/{path} {params}: {doc.get('error', doc)}")
        return doc["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's vector: [{"metric": {labels}, "value": [time, "value"]}]."""
        data = self.api("query", query=expr)
        if data["resultType"] != "vector":
            raise LabError(f"{expr!r} is a {data['resultType']}, not a vector")
        return data["result"]

    def targets(self) -> list[dict[str, Any]]:
        return self.api("targets")["activeTargets"]

    def stop(self) -> None:
        if self.proc is not None:
            stop_pids([self.proc.pid], grace=10)
            self.proc.wait()
            self.proc = None

    def __enter__(self) -> LabPrometheus:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
