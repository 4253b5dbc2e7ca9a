"""Extra lab parts for directory failure tests and benchmarks: a copy of the lab's directory served by
a second slapd (a "replica"), a listener that accepts connections and never answers, and a throwaway
JupyterHub with configurable-http-proxy on free loopback ports.

Every process started here gets PR_SET_PDEATHSIG, so a killed test run does not leave it behind, and
is stopped by the object that started it.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.lab.directory import slapd_conf
from gateway.lab.procs import (
    LAB_MARK,
    LabError,
    free_port,
    hub_failure,
    pid_alive,
    run,
    stop_pids,
    tcp_open,
    wait_for,
)

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: ask the kernel for SIGTERM when our parent exits.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


# -- a second slapd ---------------------------------------------------------------------------------


@dataclass
class DirectoryCopy:
    """A slapd serving a copy of the lab's directory (same suffix, people, groups and passwords)."""

    dir: Path
    port: int
    ldaps_port: int | None
    argv: list[str] = field(repr=False)  # slapd's command line, for start()
    pid: int = 0
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def uri(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ldaps_uri(self) -> str:
        if self.ldaps_port is None:
            raise LabError("this directory copy was started without TLS")
        return f"ldaps://127.0.0.1:{self.ldaps_port}"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and pid_alive(self.pid)

    def stop(self) -> None:
        if self.proc is None:
            return
        stop_pids([self.pid], grace=3)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=2)

    def start(self) -> None:
        """Start slapd again on the same ports (after stop(): a directory that comes back)."""
        log = self.dir / "slapd.log"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", LAB_MARK: str(self.dir)},
                preexec_fn=_die_with_parent, close_fds=True,  # noqa: PLW1509 - prctl only
            )
        self.pid = self.proc.pid
        try:
            wait_for(lambda: tcp_open("127.0.0.1", self.port) and (
                self.ldaps_port is None or tcp_open("127.0.0.1", self.ldaps_port)),
                10, "the directory copy's slapd", log)
        except LabError:
            self.stop()
            raise


def start_directory_copy(lab_info: Mapping[str, Any], dest: Path | str, *, tls: bool = True,
                         memberof: bool = False) -> DirectoryCopy:
    """Copy the lab's directory (slapcat, then slapadd) into `dest` and serve it on new ports.

    The slapd.conf has the lab's shape (gateway.lab.directory.slapd_conf) and its TLS certificate.
    `tls=False` leaves TLS out (a server that refuses StartTLS); `memberof=True` loads OpenLDAP's
    memberof overlay, which maintains `memberOf` on users for groupOfNames changes made after the start.
    """
    dest = Path(dest).resolve()
    lab_dir = Path(lab_info["dir"])
    admin_password = json.loads(Path(lab_info["ldap"]["passwords_file"]).read_text())["admin"]
    (dest / "db").mkdir(parents=True, exist_ok=True)
    conf_text = slapd_conf(dest, lab_dir / "tls", admin_password)
    if not tls:
        conf_text = "\n".join(line for line in conf_text.splitlines() if not line.startswith("TLS")) + "\n"
    if memberof:
        conf_text = conf_text.replace("moduleload back_mdb", "moduleload back_mdb\nmoduleload memberof")
        conf_text += "\noverlay memberof\n"
    conf = dest / "slapd.conf"
    conf.write_text(conf_text)
    conf.chmod(0o600)
    ldif = dest / "copy.ldif"
    run(["slapcat", "-f", str(lab_dir / "ldap" / "slapd.conf"), "-l", str(ldif)])
    run(["slapadd", "-q", "-f", str(conf), "-l", str(ldif)])

    port = free_port()
    ldaps_port = free_port() if tls else None
    urls = f"ldap://127.0.0.1:{port}/" + (f" ldaps://127.0.0.1:{ldaps_port}/" if ldaps_port else "")
    copy = DirectoryCopy(dest, port, ldaps_port, ["slapd", "-f", str(conf), "-h", urls, "-d", "none"])
    copy.start()
    return copy


# -- a server that never answers --------------------------------------------------------------------


class StalledListener:
    """Accepts TCP connections on 127.0.0.1 and never sends a byte: a directory that hangs.

    Use as a context manager; `port` is where it listens, `accepted` counts connections.
    """

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(128)
        self._sock.settimeout(0.2)
        self.port: int = self._sock.getsockname()[1]
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="stalled-listener", daemon=True)
        self._thread.start()

    @property
    def uri(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ldaps_uri(self) -> str:
        return f"ldaps://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._held.append(conn)  # kept open, never read, never answered
            self.accepted += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        for conn in self._held:
            conn.close()
        self._sock.close()

    def __enter__(self) -> StalledListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- a throwaway JupyterHub ------------------------------------------------------------------------------


def _chp_command() -> str:
    candidate = Path(sys.executable).parent / "configurable-http-proxy"
    if candidate.exists():
        return str(candidate)
    return "configurable-http-proxy"


class HubProcess:
    """A real JupyterHub (with configurable-http-proxy) on free loopback ports, in `workdir`.

    `config` is extra jupyterhub_config.py text (the authenticator's settings). `stop()` kills the
    hub's process group and the proxy (which JupyterHub starts in a session of its own), whatever
    state they are in.
    """

    def __init__(self, workdir: Path | str, config: str, env: Mapping[str, str] | None = None,
                 pythonpath: str | None = None):
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.env = dict(env or {})
        self.pythonpath = pythonpath
        self.proxy_port = free_port()
        self.hub_port = free_port()
        self.api_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.workdir / "hub.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    def _config_text(self) -> str:
        w = self.workdir
        return f"""# written by gateway.lab.replica.HubProcess
c.JupyterHub.bind_url = "http://127.0.0.1:{self.proxy_port}"
c.JupyterHub.hub_bind_url = "http://127.0.0.1:{self.hub_port}"
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{self.api_port}"
c.ConfigurableHTTPProxy.command = [{_chp_command()!r}]
c.ConfigurableHTTPProxy.pid_file = {str(w / "proxy.pid")!r}
c.JupyterHub.pid_file = {str(w / "hub.pid")!r}
c.JupyterHub.db_url = {"sqlite:///" + str(w / "jupyterhub.sqlite")!r}
c.JupyterHub.cookie_secret_file = {str(w / "cookie_secret")!r}
c.JupyterHub.cleanup_servers = True
c.JupyterHub.log_level = "INFO"
{self.config}
"""

    def start(self, timeout: float = 60) -> None:
        cfg = self.workdir / "jupyterhub_config.py"
        cfg.write_text(self._config_text())
        env = {"PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "HOME": str(self.workdir), LAB_MARK: str(self.workdir), **self.env}
        if self.pythonpath:
            env["PYTHONPATH"] = self.pythonpath
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "jupyterhub", "-f", str(cfg)],
                cwd=self.workdir, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent,  # noqa: PLW1509
            )
        failure = hub_failure(self.proc, self.url, timeout)
        if failure:
            raise LabError(f"{failure}.\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def _proxy_pid(self) -> int | None:
        try:
            return int((self.workdir / "proxy.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        proxy = self._proxy_pid()
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)  # the hub stops the proxy on SIGTERM
            try:
                self.proc.wait(timeout=8)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        if proxy is not None and pid_alive(proxy):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proxy, signal.SIGTERM)  # the proxy leads its own session
            stop_pids([proxy], grace=3)

    @contextlib.contextmanager
    def running(self) -> Iterator[HubProcess]:
        try:
            self.start()
            yield self
        finally:
            self.stop()
