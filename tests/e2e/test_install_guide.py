"""The README's "Install on your cluster", run on the lab from its own command blocks: a wheel built
from this checkout into a fresh venv, the lab's policy as the admin's edit, `hpcgate deploy-files`,
the files installed, the hub started from its unit as hpcgate-hub, check-config as the gate, a
researcher's first login and server, then the upgrade with that server running.

Where no systemd runs, `systemctl` is tests/fakes/systemd/systemctl: it starts the unit's
ExecStart as its User= with its Environment= and LoadCredential= (the sandboxing settings are
systemd's own; tests/unit/test_deploy_files.py has systemd-analyze check them)."""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.lab.accounts import HUB_USER
from gateway.lab.procs import free_port
from gateway.lab.site import write_lab_site
from tests.helpers.lab import passwords
from tests.helpers.portal import Portal

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[2]
FAKE_SYSTEMD = ROOT / "tests" / "fakes" / "systemd"


def guide_blocks() -> tuple[list[str], list[str]]:
    """The guide's ```sh blocks: (installing, upgrading), in the README's order."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Install on your cluster\n", 1)[1].split("\n## ", 1)[0]
    install, upgrade = section.split("\n### Upgrading\n", 1)

    def blocks(part: str) -> list[str]:
        return re.findall(r"^```sh\n(.*?)^```$", part, re.S | re.M)

    return blocks(install), blocks(upgrade)


@pytest.fixture(scope="module")
def site(lab: dict) -> Iterator[dict]:
    """A checkout, the environment the guide's variables take, and the lab's policy as the file
    the admin's editor writes."""
    work = Path(tempfile.mkdtemp(prefix="hpcgate-install-", dir="/var/tmp"))
    work.chmod(0o755)  # the venv inside must be readable by the hub and the users
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    src = work / "src"
    for name in files:
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    hub_ip = lab["nodes"]["c2"]["hub_address"] if "c2" in lab["nodes"] else "127.0.0.1"
    port = free_port()
    policy = write_lab_site(lab, lab["ldap"]["service_password_file"], work / "lab-site.yaml",
                            overrides={"connection": {
                                "mode": "direct",
                                "hub_api_url": f"http://{hub_ip}:{free_port()}/hub/api"}})
    editor = work / "editor"
    editor.write_text(f'#!/bin/sh\ncp {policy} "$1"\n')  # the admin's edit: the lab's policy
    editor.chmod(0o755)
    env = {
        "PATH": f"{FAKE_SYSTEMD}:/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin",
        "HOME": "/root", "LANG": "C.UTF-8", "EDITOR": str(editor),
        "ETC": str(work / "etc"), "STATE": str(work / "state"), "VENV": str(work / "venv"),
        "URL": f"http://127.0.0.1:{port}/", "UNITS": str(work / "units"),
        # "hpcgate-lab-": `hpcgate lab down` removes it with the lab's own rules.
        "SUDOERS": f"/etc/sudoers.d/hpcgate-lab-install-{secrets.token_hex(4)}",
        "SYSTEMCTL_UNIT_DIR": str(work / "units"), "SYSTEMCTL_STATE_DIR": str(work / "systemd"),
    }
    (work / "units").mkdir()
    info = {"work": work, "src": src, "env": env, "url": env["URL"].rstrip("/"), "jobs": []}
    try:
        yield info
    finally:
        subprocess.run(["systemctl", "stop", "hpcgate-hub"], env=env, capture_output=True)
        for job in info["jobs"]:
            subprocess.run(["scancel", job], env={**os.environ, "SLURM_CONF": lab["slurm"]["conf"]},
                           capture_output=True)
        Path(env["SUDOERS"]).unlink(missing_ok=True)
        if os.environ.get("HPCGATE_KEEP_HUB") is None:
            shutil.rmtree(work, ignore_errors=True)


def run_blocks(site: dict, blocks: list[str], timeout: float) -> str:
    script = "set -eux\n" + "\n".join(blocks)
    # The variables block first in every run: each script is a fresh shell, as a reader's may be.
    first = guide_blocks()[0][0]
    if blocks[0] != first:
        script = "set -eux\n" + first + "\n".join(blocks)
    res = subprocess.run(["bash", "-c", script], cwd=site["src"], env=site["env"],
                         capture_output=True, text=True, timeout=timeout)
    log = Path(site["env"]["SYSTEMCTL_STATE_DIR"]) / "hpcgate-hub.service.log"
    hub_log = log.read_text()[-3000:] if log.exists() else ""
    assert res.returncode == 0, f"{res.stdout[-4000:]}\n{res.stderr[-4000:]}\nhub:\n{hub_log}"
    return res.stdout


def alice_jobs(lab: dict) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-u", "alice", "-o", "%i"], capture_output=True,
                         text=True, env={**os.environ, "SLURM_CONF": lab["slurm"]["conf"]})
    return out.stdout.split()


def hub_pid(site: dict) -> int:
    return int((Path(site["env"]["SYSTEMCTL_STATE_DIR"]) / "hpcgate-hub.service.pid").read_text())


def test_the_guide_installs_an_unprivileged_hub_and_upgrades_it_under_a_running_server(
        lab: dict, site: dict) -> None:
    install, upgrade = guide_blocks()
    assert len(install) >= 6 and len(upgrade) == 1
    out = run_blocks(site, install, timeout=1200)
    # Step 5 printed who the hub runs as; /proc agrees.
    assert re.search(rf"^{HUB_USER}\s+{hub_pid(site)}\s", out, re.M), out[-2000:]
    assert os.stat(f"/proc/{hub_pid(site)}").st_uid == pwd.getpwnam(HUB_USER).pw_uid
    # check-config passed, test jobs included (run_blocks fails otherwise); the installed files
    # are the generated ones.
    etc = Path(site["env"]["ETC"])
    assert (etc / "jupyterhub_config.py").read_text() == (etc / "deploy" / "jupyterhub_config.py").read_text()
    assert Path(site["env"]["SUDOERS"]).read_text() == (etc / "deploy" / "sudoers").read_text()

    # Step 7: the first login, and a server.
    alice = Portal(site["url"])
    status, url, body = alice.login("alice", passwords(lab)["alice"])
    assert status == 200 and "/hub/login" not in url, (status, url, Portal.login_error(body))
    before = set(alice_jobs(lab))
    status, _, body = alice.request("/hub/spawn", {"partition": "debug", "cpus": "1",
                                                   "memory": "1G", "walltime": "10m"})
    assert status == 200, body[-500:]
    assert alice.wait_for_lab("alice") == "/user/alice/lab"
    [job] = set(alice_jobs(lab)) - before
    site["jobs"].append(job)

    # Upgrading with the server running: the same job serves alice afterwards.
    old_pid = hub_pid(site)
    run_blocks(site, upgrade, timeout=900)
    assert hub_pid(site) != old_pid
    assert job in alice_jobs(lab)
    assert alice.wait_for_lab("alice", timeout=60) == "/user/alice/lab"

    # Her server stops through the hub as she would stop it, and its job ends.
    req = urllib.request.Request(f"{site['url']}/hub/api/users/alice/server", method="DELETE",
                                 headers={"X-XSRFToken": alice._xsrf(),
                                          "Referer": f"{site['url']}/hub/home"})
    with alice.opener.open(req, timeout=60) as resp:
        assert resp.status in (202, 204)
