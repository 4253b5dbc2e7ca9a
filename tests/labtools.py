"""Small helpers for tests that act on the lab as its users would."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any


def as_user(info: dict[str, Any], user: str, argv: list[str], input: str | None = None,
            timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run argv as a lab user through sudo, passing SLURM_CONF explicitly (sudo drops it)."""
    env = [f"{k}={v}" for k, v in info["slurm"]["env"].items()]
    return subprocess.run(["sudo", "-u", user, "env", *env, *argv], capture_output=True,
                          text=True, input=input, timeout=timeout, cwd="/")


def submit_as(info: dict[str, Any], user: str, node: str, script: str, output: str) -> str:
    proc = as_user(info, user, ["sbatch", "--parsable", "-w", node, "-o", output], input=script)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


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
