"""Hostile spawn forms through the real hub's form handler: never a 5xx, and nothing reaches the
batch script that the policy did not validate. The policy's command_path puts a stand-in sbatch
first (tests/fakes/slurm/sbatch): it keeps each script the real builder wrote, run as the user
through the real sudo runner, and refuses it, so no job is left behind."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.lab.site import with_changes
from tests.helpers.hub import Hub, running_hub
from tests.helpers.lab import passwords
from tests.helpers.portal import Portal

pytestmark = pytest.mark.lab

FAKE_SBATCH = Path(__file__).resolve().parents[1] / "fakes" / "slurm" / "sbatch"
# alice (hpc-users, soundscape-lab) in the lab policy: debug (30 min, 4 cores, 4G for
# hpc-users) and long (12 h, 8 cores, 8G for soundscape-lab); no accounts, no GPUs.
ALLOWED = {"partition": {"debug", "long"}}


@pytest.fixture(scope="module")
def fuzz_hub(lab: dict) -> Iterator[tuple[Hub, Portal, Path]]:
    fake = Path(tempfile.mkdtemp(prefix="hpcgate-fakeslurm-", dir="/var/tmp"))
    try:
        fake.chmod(0o755)
        shutil.copy(FAKE_SBATCH, fake / "sbatch")
        (fake / "sbatch").chmod(0o755)
        log = fake / "scripts.jsonl"
        log.touch()
        log.chmod(0o666)  # the stand-in runs as alice
        policy = {"connection": {"mode": "direct"}, "cluster": {
            "command_path": f"{fake}:/usr/local/bin:/usr/bin:/bin",
            "environment": {"HPCGATE_FAKE_SBATCH_LOG": str(log)}}}
        with running_hub(lab, "formfuzz", ldap_login=True, policy=with_changes(policy)) as h:
            portal = Portal(h.hub.url)
            status, url, _ = portal.login("alice", passwords(lab)["alice"])
            assert status == 200 and "/hub/login" not in url
            yield h, portal, log
    finally:
        shutil.rmtree(fake, ignore_errors=True)


_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
_NASTY = st.sampled_from(["debug\n#SBATCH --uid=0", "$(id)", "`id`", "long; rm -rf /", "../../x",
                          "１２", "1e9", "-1", "99999999999999999999", "0", "  2  ", "2h", "1-00:00",
                          "4G", "8000000G", "debug\x00", "\\", '"', "%", "--wrap=id", "*", ""])
_VALUE = st.one_of(_NASTY, _TEXT)
_FIELDS = ("partition", "account", "cpus", "memory", "gpus", "walltime", "node", "script",
           "environment", "extra_directives")


@st.composite
def _form(draw: st.DrawFn) -> dict[str, Any]:
    keys = draw(st.lists(st.sampled_from(_FIELDS), max_size=6, unique=True))
    return {k: draw(st.one_of(_VALUE, st.lists(_VALUE, min_size=2, max_size=3))) for k in keys}


def _post(portal: Portal, form: dict[str, Any]) -> int:
    """POST /hub/spawn with `form` (a list value repeats the field, as a duplicated input does)."""
    import urllib.error
    import urllib.parse
    import urllib.request

    pairs = [(k, v) for k, vs in form.items() for v in (vs if isinstance(vs, list) else [vs])]
    data = urllib.parse.urlencode([*pairs, ("_xsrf", portal._xsrf())]).encode()
    try:
        with portal.opener.open(portal.base + "/hub/spawn", data, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def _settle(hub: Hub) -> None:
    """Until alice's spawn has failed (the stand-in refuses every job) or never began."""
    deadline = time.monotonic() + 30
    while hub.server("alice") is not None:
        assert time.monotonic() < deadline, hub.server("alice")
        time.sleep(0.05)


def _directives(script: str) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([a-z-]+)(?:=(.*))?$", script, re.M))


@settings(max_examples=int(os.environ.get("HPCGATE_FUZZ_EXAMPLES", "200")), deadline=None,
          suppress_health_check=list(HealthCheck))
@given(form=_form())
@example(form={"partition": "long", "cpus": "8", "memory": "8G", "walltime": "12h"})
@example(form={"partition": "debug\n#SBATCH --uid=0", "cpus": "2"})
@example(form={"partition": ["long", "debug"], "walltime": ["1h", "100h"]})
def test_hostile_spawn_forms(fuzz_hub: tuple[Hub, Portal, Path], form: dict[str, Any]) -> None:
    hub, portal, log = fuzz_hub
    seen = len(log.read_text().splitlines())
    status = _post(portal, form)
    assert status < 500, (status, form)
    _settle(hub)
    for line in log.read_text().splitlines()[seen:]:
        record = json.loads(line)
        script = record["script"]
        lines = script.splitlines()
        # No line of the script comes from the form but through the validated fields below.
        assert not any("uid=0" in x or "$(id)" in x or "`id`" in x or "rm -rf" in x for x in lines)
        d = _directives(script)
        assert d.get("partition") in ALLOWED["partition"], d
        assert 1 <= int(d["cpus-per-task"]) <= 8, d
        assert re.fullmatch(r"\d+M", d["mem"]) and int(d["mem"][:-1]) <= 8 * 1024, d
        days, hours, minutes, seconds = map(int, re.fullmatch(r"(\d+)-(\d+):(\d+):(\d+)",
                                                             d["time"]).groups())
        limit_h = 12 if d["partition"] == "long" else 0.5
        assert days * 24 + hours + minutes / 60 + seconds / 3600 <= limit_h, d
        assert "account" not in d and "gres" not in d, d  # the lab policy has neither


def test_the_stand_in_saw_real_scripts(fuzz_hub: tuple[Hub, Portal, Path]) -> None:
    # The explicit examples above include valid forms: the checks were not vacuous.
    hub, _, log = fuzz_hub
    records = [json.loads(x) for x in log.read_text().splitlines()]
    assert records and all(r["uid"] != 0 for r in records)
    assert any(_directives(r["script"]).get("partition") == "long" for r in records)
    # Every refusal was a sentence: the only tracebacks in the hub's log are JupyterHub's own
    # logging of a refused form (pages.py logs the exception it then shows on the form: the
    # spawner's FormRefused, or a SpawnException from start()).
    log_text = hub.hub.log.read_text()
    blocks = re.findall(r"Traceback \(most recent call last\):\n((?:[ \t].*\n)+)", log_text)
    ends = [[x.strip() for x in block.splitlines() if x.strip()][-1] for block in blocks]
    assert all(e.startswith(("gateway.hub.spawner.FormRefused: HTTP 400",
                             "jupyterhub.spawner.SpawnException: 400")) for e in ends), ends
    assert not hub.active_jobs("alice")
