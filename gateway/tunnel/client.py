"""The job's side of a reverse tunnel: one OpenSSH client process, supervised.

The supervisor runs ssh, reads what it prints (`-v`), and calls the tunnel up only when ssh has
confirmed every forward (sshd answers a remote-forward request only once it listens; a port that
merely opens is not enough). When ssh exits (the connection dropped, the hub host rebooted, sshd
restarted) it starts a new one after a back-off delay: 0.2 s, doubling to 30 s, back to 0.2 s once
a connection has stayed up for 30 s. The Jupyter server and its kernels are separate processes and
never notice, apart from requests made while the tunnel is down.
"""

from __future__ import annotations

import atexit
import collections
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.job.private import write_private
from gateway.tunnel.sshargs import (
    Backoff,
    ForwardWatch,
    ReverseTunnel,
    free_loopback_port,
    known_hosts_text,
    reverse_argv,
)

Log = Callable[[str], None]


class TunnelError(RuntimeError):
    """The tunnel could not be opened; the message holds what ssh said."""


def _print(line: str) -> None:
    print(f"hpcgate tunnel: {line}", flush=True)


class TunnelSupervisor:
    """Keep one ssh process running; `up` is set while all its forwards are confirmed."""

    def __init__(self, argv: list[str], expect: set[tuple[str, int]], log: Log = _print,
                 first_delay: float = 0.2, max_delay: float = 30.0, stable_after: float = 30.0):
        self.argv = argv
        self.expect = expect  # {("remote-ok", P), ("local-ok", L)}
        self.log = log
        self.first_delay, self.max_delay, self.stable_after = first_delay, max_delay, stable_after
        self.up = threading.Event()
        self.proc: subprocess.Popen[str] | None = None
        self.attempts = 0
        self.connects = 0
        self.tail: collections.deque[str] = collections.deque(maxlen=12)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hpcgate-tunnel", daemon=True)

    def start(self) -> TunnelSupervisor:
        self._thread.start()
        atexit.register(self.stop)
        return self

    def wait_ready(self, timeout: float, give_up_after: int = 4) -> None:
        """Return once the forwards are confirmed; TunnelError after `timeout` seconds or after
        `give_up_after` failed attempts without ever being up (bad key, unknown host key...)."""
        deadline = time.monotonic() + timeout
        while not self.up.wait(0.05):
            if time.monotonic() > deadline or (self.connects == 0 and self.attempts >= give_up_after
                                               and self.proc is not None
                                               and self.proc.poll() is not None):
                said = " | ".join(self.tail) or "nothing"
                raise TunnelError(f"the SSH tunnel to the hub could not be opened after "
                                  f"{self.attempts} attempts; ssh said: {said}")

    def stop(self) -> None:
        self._stopping.set()
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()

    def _run(self) -> None:
        backoff = Backoff(self.first_delay, self.max_delay, self.stable_after)
        while not self._stopping.is_set():
            self.attempts += 1
            started = time.monotonic()
            was_up = self._run_once()
            self.up.clear()
            if self._stopping.is_set():
                return
            delay = backoff.after_exit(was_up, time.monotonic() - started)
            self.log(f"ssh exited ({self.proc.returncode if self.proc else '?'}); "
                     f"reconnecting in {delay:.1f} s")
            self._stopping.wait(delay)

    def _run_once(self) -> bool:
        """Run one ssh until it exits; True if it was ever fully up."""
        watch = ForwardWatch(self.expect)
        try:
            proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, text=True, errors="replace", bufsize=1)
        except OSError as err:
            self.tail.append(f"cannot run ssh: {err}")
            self.log(self.tail[-1])
            return False
        self.proc = proc
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.rstrip()
            seen = watch.feed(line)
            if seen == "up":
                self.connects += 1
                self.up.set()
                self.log(f"up (connection {self.connects}, ssh pid {proc.pid})")
            elif seen == "said":
                self.tail.append(line)
                self.log(line)
        proc.wait()
        return watch.up


def rewrite_hub_urls(env: dict[str, str], api_port: int) -> dict[str, str]:
    """The server's environment with every URL under the hub API moved to the tunnel's local end
    (http://127.0.0.1:api_port/...): the API URL itself and the activity URL."""
    from urllib.parse import urlsplit, urlunsplit

    api = env.get("JUPYTERHUB_API_URL", "")
    base = urlsplit(api)
    out = dict(env)
    for name in ("JUPYTERHUB_API_URL", "JUPYTERHUB_ACTIVITY_URL"):
        url = urlsplit(env.get(name, ""))
        if url.netloc and url.netloc == base.netloc:
            out[name] = urlunsplit(("http", f"127.0.0.1:{api_port}", url.path, url.query, ""))
    return out


def open_reverse_tunnel(config: dict[str, Any], state_dir: Path, server_port: int,
                        log: Log = _print, timeout: float = 60) -> tuple[TunnelSupervisor, int]:
    """Start the supervised tunnel described by the launch file's `tunnel` section; return it and
    the node-local port where the hub API now answers. Raises TunnelError when it cannot open."""
    key_file, known_hosts = state_dir / "tunnel_key", state_dir / "tunnel_known_hosts"
    write_private(key_file, config["private_key"].encode())  # ssh refuses keys others read
    atexit.register(lambda: key_file.unlink(missing_ok=True))
    write_private(known_hosts, known_hosts_text(config["host_keys"]).encode())
    api_port = free_loopback_port()
    spec = ReverseTunnel(
        ssh_host=config["ssh_host"], ssh_port=int(config["ssh_port"]), ssh_user=config["ssh_user"],
        remote_port=int(config["remote_port"]), server_port=server_port, api_local_port=api_port,
        hub_api_host=config["hub_api_host"], hub_api_port=int(config["hub_api_port"]),
        ciphers=config.get("ciphers") or ReverseTunnel.ciphers,
        alive_interval=int(config.get("alive_interval", 5)))
    argv = reverse_argv(spec, str(key_file), str(known_hosts), ssh=config.get("ssh", "ssh"))
    supervisor = TunnelSupervisor(argv, {("remote-ok", spec.remote_port), ("local-ok", api_port)},
                                  log=log).start()
    supervisor.wait_ready(timeout)
    return supervisor, api_port
