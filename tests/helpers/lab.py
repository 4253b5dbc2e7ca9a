"""Acting on the lab as its users would, and keeping their Unix homes clean."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

USERS = ("alice", "bob", "carol")


def passwords(info: dict[str, Any]) -> dict[str, str]:
    """The lab directory's passwords (users, service account, admin)."""
    return json.loads(Path(info["ldap"]["passwords_file"]).read_text())


def workdir(info: dict[str, Any], user: str) -> Path:
    """The user's home in this lab (DIR/home/USER): where tests put whatever the user's jobs write."""
    return Path(info["users"][user]["workdir"])


def as_user(info: dict[str, Any], user: str, argv: list[str], input: str | None = None,
            timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run argv as a lab user through sudo, passing SLURM_CONF explicitly (sudo drops it)."""
    env = [f"{k}={v}" for k, v in info["slurm"]["env"].items()]
    return subprocess.run(["sudo", "-u", user, "env", *env, *argv], capture_output=True,
                          text=True, input=input, timeout=timeout, cwd="/")


def submit_as(info: dict[str, Any], user: str, node: str, script: str, output: str) -> str:
    """sbatch `script` as `user` on `node`, working in the user's lab home; the job id."""
    proc = as_user(info, user, ["sbatch", "--parsable", "-w", node, "-o", output,
                                "-D", str(workdir(info, user))], input=script)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


def job_output(info: dict[str, Any], user: str, prefix: str = "lab-test") -> Path:
    """A fresh output file for one of the user's test jobs, in their lab home."""
    return workdir(info, user) / f"{prefix}-{os.urandom(8).hex()}.out"


def wait_for_file(path: str | Path, contains: str = "", timeout: float = 30) -> str:
    """Wait until a job's output file holds `contains` (read as root), and return its text."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        p = Path(path)
        if p.exists():
            text = p.read_text()
            if contains in text:
                return text
        time.sleep(0.1)
    raise AssertionError(f"{path} never contained {contains!r}; last text: {text!r}")


def unix_homes(info: dict[str, Any]) -> dict[str, set[str]]:
    """Every path under each lab user's Unix home (/home/USER, shared by every lab on the
    machine), so that a test can show it left nothing there."""
    found: dict[str, set[str]] = {}
    for user, about in info["users"].items():
        home = Path(about["home"])
        paths: set[str] = set()
        for root, dirs, files in os.walk(home):
            paths.update(os.path.relpath(os.path.join(root, n), home) for n in dirs + files)
        found[user] = paths
    return found


def new_in_unix_homes(info: dict[str, Any], before: dict[str, set[str]]) -> dict[str, list[str]]:
    """What appeared in the users' Unix homes since `before` (unix_homes())."""
    now = unix_homes(info)
    return {user: sorted(now[user] - before.get(user, set())) for user in now
            if now[user] - before.get(user, set())}
