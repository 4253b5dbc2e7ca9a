"""Runs inside the batch job: bind, report, then become jupyterhub-singleuser (or the site's
`Spawner.cmd`, e.g. `hpcgate-minimal-server` for load tests).

    python -m gateway.job.launcher LAUNCH_JSON          # in the job (the job script's only command)
    python -m gateway.job.launcher --write LAUNCH_JSON  # as the user, before submit: stdin -> file

The launch file holds the server's environment, token included. It is written as the user with
mode 0600 and read here, so the token is never in argv, in the job script or in the environment
the scheduler records for the job.

The server's socket is bound here once (port 0 on the node's own address) and handed to the
Jupyter server: no bind-close-rebind race with other jobs on the node.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from gateway.job.private import write_private


def write_launch_file(path: str) -> None:
    """Create `path` (and its directory) as the calling user, mode 0600, from stdin."""
    target = Path(path)
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_private(target, sys.stdin.buffer.read())


def bind_address(config: dict[str, Any]) -> str:
    """The node's own address as the hub knows it (NodeAddr), else the interface facing the hub."""
    node = os.environ.get("SLURMD_NODENAME") or socket.gethostname().split(".")[0]
    known = config.get("node_addresses", {}).get(node)
    if known:
        return known
    hub_host = config["hub_host"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((hub_host, 9))  # no packet is sent: this only picks the route
        return probe.getsockname()[0]


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a Unix socket: the hub API's end of the reverse tunnel on the node."""

    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


def post_json(url: str, body: bytes, token: str, timeout: float = 10) -> tuple[int, bytes]:
    """POST to the hub API: over TCP, or over the tunnel's Unix socket (`http+unix://<quoted
    path>/...`, reverse mode). (status, body); OSError when nothing answers."""
    return hub_request("POST", url, body, token, timeout)


def hub_request(method: str, url: str, body: bytes | None, token: str,
                timeout: float = 10) -> tuple[int, bytes]:
    """One request to the hub API (see post_json); the query string is kept."""
    parts = urlsplit(url)
    headers = {"Authorization": f"token {token}", "Content-Type": "application/json"}
    if parts.scheme == "http+unix":
        conn: http.client.HTTPConnection = UnixHTTPConnection(unquote(parts.netloc), timeout)
    elif parts.scheme == "https":
        conn = http.client.HTTPSConnection(parts.hostname or "", parts.port, timeout=timeout)
    else:
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    except http.client.HTTPException as err:
        raise OSError(str(err)) from err
    finally:
        conn.close()


def report(config: dict[str, Any], host: str, port: int, deadline: float) -> None:
    """Tell the hub where the server listens, retrying while the hub is away (restarts)."""
    env = config["env"]
    url = env["JUPYTERHUB_API_URL"].rstrip("/") + "/hpcgate/report"
    body = json.dumps({"server_name": env.get("JUPYTERHUB_SERVER_NAME", ""), "host": host,
                       "port": port}).encode()
    delay = 0.2
    while True:
        try:
            status, answer = post_json(url, body, env["JUPYTERHUB_API_TOKEN"])
            if status == 200:
                return
            if status in (400, 403):  # refused for good: no retry can fix it
                raise SystemExit(f"hpcgate: the hub refused this server's address: "
                                 f"{answer.decode(errors='replace')}")
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("hpcgate: the hub could not be reached to report the server address")
        time.sleep(delay)
        delay = min(delay * 2, 10)


def end_at_walltime(config: dict[str, Any], grace: float = 8.0) -> None:
    """On SIGUSR2 (the scheduler's warning shortly before the walltime, see JobRequest's
    end_signal_seconds): tell the hub and the open JupyterLab tabs (gateway.job.session reads
    HPCGATE_ENDING) that the session ends at its time limit, give the tabs `grace` seconds to
    ask, then stop the server the way SIGTERM does, which shuts its kernels down: the job ends
    cleanly, not killed."""
    import signal
    import threading

    def tell_then_stop() -> None:
        os.environ["HPCGATE_ENDING"] = "time-limit"
        env = config["env"]
        url = env["JUPYTERHUB_API_URL"].rstrip("/") + "/hpcgate/report"
        body = json.dumps({"server_name": env.get("JUPYTERHUB_SERVER_NAME", ""),
                           "ending": "time-limit"}).encode()
        print("hpcgate: the walltime is near: stopping JupyterLab and its kernels", flush=True)
        deadline = time.monotonic() + grace  # JupyterLab asks every 5 s this close to the end
        while time.monotonic() < deadline:  # a busy hub or a tunnel reconnecting: try again
            try:
                if post_json(url, body, env["JUPYTERHUB_API_TOKEN"], timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(1)
        time.sleep(max(0.0, deadline - time.monotonic()))
        os.kill(os.getpid(), signal.SIGTERM)

    def on_usr2(signum: int, frame: Any) -> None:
        threading.Thread(target=tell_then_stop, daemon=True).start()

    # USR2, not USR1: jupyter_server takes SIGUSR1 for itself (it prints its info).
    signal.signal(signal.SIGUSR2, on_usr2)


def open_tunnel(config: dict[str, Any], state_dir: Path, server_port: int) -> tuple[str, int]:
    """Reverse mode: open the supervised SSH tunnel to the hub host and point the server's hub
    URLs through it. Returns what to report: the hub-side end of the tunnel (127.0.0.1:P)."""
    from gateway.tunnel.client import TunnelError, open_reverse_tunnel, rewrite_hub_urls

    tunnel = config["tunnel"]
    try:
        _, api_socket = open_reverse_tunnel(tunnel, state_dir, server_port)
    except TunnelError as err:
        raise SystemExit(f"hpcgate: {err}") from err
    config["env"] = rewrite_hub_urls(config["env"], api_socket)
    os.environ.update(config["env"])
    return "127.0.0.1", int(tunnel["remote_port"])


def use_bound_socket(sock: socket.socket) -> None:
    """Make jupyter_server serve on our socket instead of binding its own port."""
    from jupyter_server.serverapp import ServerApp

    def find_port(self: ServerApp) -> None:
        self.port = sock.getsockname()[1]

    def bind_tcp(self: ServerApp) -> bool:
        self.http_server.add_sockets([sock])
        return True

    ServerApp._find_http_port = find_port  # type: ignore[method-assign]
    ServerApp._bind_http_server_tcp = bind_tcp  # type: ignore[method-assign]


def activity_args(config: dict[str, Any], state_dir: Path) -> list[str]:
    """The activity recorder (gateway.job.activity) in this server, unless the site policy turned
    it off (activity.record): its buffer in the server's directory, what it keeps of code as the
    policy says."""
    activity = config.get("activity", {})
    # gateway.job.session: the time left and the session's end, for JupyterLab (see there).
    if not activity.get("record", True):
        return ["--ServerApp.jpserver_extensions={'gateway.job.session': True}"]
    return ["--ServerApp.jpserver_extensions={'gateway.job.activity': True, "
            "'gateway.job.session': True}",
            f"--ActivityRecorder.state_dir={state_dir}",
            f"--ActivityRecorder.code={activity.get('code', 'hash')}"]


DEFAULT_CMD = ["jupyterhub-singleuser"]


def exec_command(cmd: list[str], args: list[str], sock: socket.socket) -> None:
    """Become `cmd` (JupyterHub's `Spawner.cmd`, when a site sets another single-user server),
    handing it the bound socket by systemd's socket-activation convention: fd 3, LISTEN_FDS=1,
    LISTEN_PID = this pid, which exec keeps."""
    if sock.fileno() != 3:
        os.dup2(sock.fileno(), 3)
    os.set_inheritable(3, True)  # Python's sockets are close-on-exec (and dup2 onto itself is a no-op)
    os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()))
    os.execvp(cmd[0], [*cmd, *args])  # noqa: S606 - the site's own Spawner.cmd, an argv


def launch(path: str) -> None:
    config = json.loads(Path(path).read_text())
    env = config["env"]
    # Reverse mode: the server listens on the node's loopback only; the tunnel carries it out.
    host = "127.0.0.1" if config.get("tunnel") else bind_address(config)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(128)
    sock.setblocking(False)
    port = sock.getsockname()[1]

    os.environ.update(env)
    prefix = env.get("JUPYTERHUB_SERVICE_PREFIX", "/")
    os.environ["JUPYTERHUB_SERVICE_URL"] = f"http://{host}:{port}{prefix}"
    # HOME is the home the hub resolved (the directory's homeDirectory), not the one sudo carried
    # over from the local account: where they differ (each lab's own homes), Jupyter's runtime and
    # settings files follow the directory. The server's root is the policy's job.workdir.
    if config.get("home"):
        os.environ["HOME"] = config["home"]
    os.environ.setdefault("HOME", os.path.expanduser("~"))
    os.chdir(config.get("workdir") or os.environ["HOME"])
    if config.get("depots") is not None:  # links to the user's depots, and /files/ through them
        from gateway.depots.links import prepare_server

        prepare_server(config["depots"], Path(path).parent, log=lambda line: print(line, flush=True))
    print(f"hpcgate: JupyterLab for {env.get('JUPYTERHUB_USER')} on {host}:{port}", flush=True)

    report_host, report_port = host, port
    if config.get("tunnel"):
        report_host, report_port = open_tunnel(config, Path(path).parent, port)
    report(config, report_host, report_port, time.monotonic() + config.get("report_timeout", 600))
    cmd = config.get("cmd") or DEFAULT_CMD
    if cmd != DEFAULT_CMD:
        exec_command(cmd, config.get("args", []), sock)  # the walltime signal: its own
    end_at_walltime(config)
    use_bound_socket(sock)
    from jupyterhub.singleuser import main as singleuser_main

    from gateway.job.files import HANDLER

    sys.argv = ["jupyterhub-singleuser", *config.get("args", []),
                f"--ContentsManager.files_handler_class={HANDLER}",
                "--ServerApp.contents_manager_class=gateway.job.contents.ContentsManager",
                *activity_args(config, Path(path).parent)]
    sys.exit(singleuser_main())


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--write"] and len(args) == 2:
        write_launch_file(args[1])
    elif len(args) == 1:
        launch(args[0])
    else:
        raise SystemExit("usage: python -m gateway.job.launcher [--write] LAUNCH_JSON")


if __name__ == "__main__":
    main()
