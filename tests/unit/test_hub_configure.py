"""`gateway.hub.configure(c, policy)`: a policy the hub cannot work with stops it at start."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from traitlets.config import Config

from gateway.hub import configure, handlers_installed

SITES = Path(__file__).resolve().parents[2] / "site_configs"


def write(tmp_path: Path, change: dict) -> Path:
    doc = yaml.safe_load((SITES / "university-slurm.yaml").read_text())
    doc["cluster"].update(change)
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_a_working_policy_sets_the_spawner_its_policy_and_the_routes(tmp_path: Path) -> None:
    c = Config()
    policy = write(tmp_path, {})
    configure(c, str(policy))
    assert c.JupyterHub.spawner_class == "hpcgate"
    assert c.BatchSpawner.policy_file == str(policy)
    assert handlers_installed()


@pytest.mark.parametrize(("change", "said"), [
    # transport ssh with no account for the watcher's queries: it could never ask.
    ({"ssh": {"host": "login1", "known_hosts": "/etc/kh", "key_template": "/k/{user}"}},
     "transport ssh needs service_user"),
    # slurmrestd with a key the hub cannot read.
    ({"transport": "rest", "rest": {"url": "http://ctl:6820", "jwt_key_file": "/nonexistent/jwt.key"}},
     "/nonexistent/jwt.key"),
    ({"scheduler": "pbs", "transport": "rest", "rest": {"url": "http://ctl:6820"}},
     "transport rest does not work with pbs"),
])
def test_a_policy_that_cannot_query_stops_the_hub_with_the_reason(tmp_path: Path, change: dict,
                                                                  said: str) -> None:
    policy = write(tmp_path, change)
    with pytest.raises(SystemExit) as stopped:
        configure(Config(), str(policy))
    assert f"cannot start with the site policy {policy}" in str(stopped.value.code)
    assert said in str(stopped.value.code)
