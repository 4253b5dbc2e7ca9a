"""Starting, finding and stopping the lab's daemons.

Every daemon gets `HPCGATE_LAB=<state dir>` in its environment. `down` finds what is left of a lab
(slurmstepd, job processes, sshd session children, ...) in /proc, not only by pid files.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

LAB_MARK = "HPCGATE_LAB"


class LabError(RuntimeError):
    """Something the person running the lab can fix; the message says what."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def tcp_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for(check: Callable[[], bool], timeout: float, what: str, log: Path | None = None) -> None:
    """Poll `check` every 50 ms; fail with the tail of the daemon's log when it never holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    tail = ""
    if log is not None and log.exists():
        tail = "\n  ".join(log.read_text(errors="replace").splitlines()[-15:])
        tail = f"\nLast lines of {log}:\n  {tail}"
    raise LabError(f"{what} did not come up within {timeout:.0f} s.{tail}")


def hub_failure(proc: subprocess.Popen[bytes], url: str, timeout: float) -> str | None:
    """Wait until the JupyterHub `proc` answers `url`/hub/api; None then, else why it did not."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"JupyterHub exited with {proc.returncode} at start"
        try:
            with urllib.request.urlopen(f"{url}/hub/api", timeout=1) as resp:  # noqa: S310
                if resp.status == 200:
                    return None
        except OSError:  # URLError included: not listening yet
            pass
        time.sleep(0.1)
    return f"JupyterHub did not answer within {timeout:.0f} s"


def start_daemon(
    argv: Sequence[str],
    lab_dir: Path,
    log: Path,
    env: dict[str, str] | None = None,
    user: str | None = None,
) -> int:
    """Start a long-running daemon in its own session, detached from the caller; return its pid."""
    full_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", LAB_MARK: str(lab_dir)}
    full_env.update(env or {})
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full_env,
            start_new_session=True,
            close_fds=True,
            user=user,
            group=user,
            extra_groups=[] if user else None,
        )
    return proc.pid


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # A zombie is dead for our purposes (its parent, an exited `lab up`, may never reap it).
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _parents() -> dict[int, int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


def _holds_lab_file(pid: int, lab_dir: Path) -> bool:
    prefix = f"{lab_dir}/"
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(prefix):
                return True
        except OSError:
            continue
    return False


def lab_pids(lab_dir: Path) -> list[int]:
    """Every live process of this lab, and their descendants (a job's processes under slurmstepd).

    A process belongs to the lab when it carries the lab's mark in its environment or holds a file
    of the lab open: slurmstepd wipes its environment but keeps slurmd's log open.
    """
    mark = f"{LAB_MARK}={lab_dir}".encode()
    parents = _parents()
    spared = {os.getpid()}
    pid = os.getpid()
    while pid in parents and parents[pid] not in spared and parents[pid] > 1:
        pid = parents[pid]
        spared.add(pid)
    roots = set()
    for pid in parents:
        if pid in spared or not pid_alive(pid):
            continue
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if mark in environ.split(b"\0") or _holds_lab_file(pid, lab_dir):
            roots.add(pid)
    found = set(roots)
    grew = True
    while grew:
        children = {p for p, pp in parents.items() if pp in found and p not in found}
        grew = bool(children)
        found |= children
    return sorted(p for p in found - spared if pid_alive(p))


def stop_pids(pids: Sequence[int], grace: float = 5.0) -> None:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL whatever is left."""
    live = [p for p in pids if pid_alive(p)]
    for pid in live:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while live and time.monotonic() < deadline:
        time.sleep(0.05)
        live = [p for p in live if pid_alive(p)]
    for pid in live:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 2
    while live and time.monotonic() < deadline:
        time.sleep(0.02)
        live = [p for p in live if pid_alive(p)]
    for pid in pids:
        # Reap our own children (daemons started by this process), so no zombie stays behind.
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def run(argv: Sequence[str], env: dict[str, str] | None = None, check: bool = True,
        input: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run a short command; on failure raise a LabError quoting its stderr."""
    full_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    full_env.update(env or {})
    proc = subprocess.run(list(argv), env=full_env, capture_output=True, text=True,
                          input=input, timeout=timeout)
    if check and proc.returncode != 0:
        raise LabError(f"`{' '.join(argv)}` failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc
