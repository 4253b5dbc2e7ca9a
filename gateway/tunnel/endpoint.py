"""The hub host's end of the reverse tunnels: sshd, started per connection on a TCP_NODELAY socket.

Why not the plain sshd: sshd turns Nagle's algorithm off (TCP_NODELAY) on its connection only for
sessions with a terminal. A forwarding-only connection (`ssh -N`) keeps Nagle on at the hub's end,
so a small SSH packet the hub sends (a channel window adjustment, then the next HTTP request) waits
for the node's delayed ACK: about 40 ms, measured on the lab as a Range-seek p95 of 45-47 ms through
`ssh -R`, against 1.3-2.2 ms when the very same sshd runs on a socket with TCP_NODELAY set (the
ssh client sets it on its own side). This endpoint accepts, sets TCP_NODELAY, and hands the socket
to `sshd -i` (inetd mode) with the tunnel account's configuration. It relays nothing itself.

A site with systemd gets the same from a socket unit (`Accept=yes`, `NoDelay=yes`) that starts
`sshd -i -f /etc/hpcgate/tunnel_sshd_config` per connection: `hpcgate tunnel-files` writes both
(gateway/tunnel/sitefiles.py; examples in site_configs/tunnel/).

    python -m gateway.tunnel.endpoint --listen 10.0.0.5:2222 --config tunnel_sshd_config
"""

from __future__ import annotations

import argparse
import selectors
import signal
import socket
import subprocess
import sys
from typing import Any


def parse_listen(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"--listen wants ADDRESS:PORT, not {text!r}")
    return host.strip("[]"), int(port)


def listener(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    return sock


def sshd_argv(sshd: str, config: str) -> list[str]:
    return [sshd, "-i", "-e", "-f", config]


class Endpoint:
    """Accept, set TCP_NODELAY, start `sshd -i` on the socket. One sshd per connection means
    sshd's own MaxStartups cannot apply: a cap per source address keeps one host that opens
    connections and never logs in (each lasts up to LoginGraceTime) from taking every slot."""

    def __init__(self, listen: list[tuple[str, int]], argv: list[str], max_sessions: int = 1000,
                 max_per_source: int = 128):
        self.socks = [listener(h, p) for h, p in listen]
        self.argv = argv
        self.max_sessions = max_sessions
        self.max_per_source = max_per_source
        self.children: list[tuple[subprocess.Popen[bytes], str]] = []
        self.running = True

    def serve(self) -> None:
        sel = selectors.DefaultSelector()
        for s in self.socks:
            sel.register(s, selectors.EVENT_READ)
        while self.running:
            for key, _ in sel.select(timeout=1.0):
                self._accept(key.fileobj)  # type: ignore[arg-type]
            self._reap()
        self._terminate()  # whatever started while stopping: no session outlives the endpoint

    def _reap(self) -> None:
        self.children = [(c, src) for c, src in self.children if c.poll() is None]

    def _accept(self, sock: socket.socket) -> None:
        try:
            conn, peer = sock.accept()
        except OSError:
            return
        with conn:
            if not self.running:
                return  # stopping: the sessions just ended reconnect at once; refuse them
            self._reap()
            source = peer[0]
            if (len(self.children) >= self.max_sessions
                    or sum(src == source for _, src in self.children) >= self.max_per_source):
                return  # closed at once: the job's ssh retries with backoff
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            child = subprocess.Popen(self.argv, stdin=conn.fileno(), stdout=conn.fileno(),
                                     close_fds=True)
            self.children.append((child, source))

    def stop(self, *_: Any) -> None:
        self.running = False
        self._terminate()

    def _terminate(self) -> None:
        for child, _ in self.children:
            if child.poll() is None:
                child.terminate()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.tunnel.endpoint", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", type=parse_listen, action="append", required=True,
                        help="ADDRESS:PORT to accept tunnels on (repeatable)")
    parser.add_argument("--config", required=True, help="sshd_config for the tunnel account")
    parser.add_argument("--sshd", default="/usr/sbin/sshd", help="the sshd binary")
    parser.add_argument("--max-sessions", type=int, default=1000,
                        help="connections (tunnels and logins in progress) at once")
    parser.add_argument("--max-per-source", type=int, default=128,
                        help="connections at once from one address (a node runs one per job)")
    args = parser.parse_args(argv)
    endpoint = Endpoint(args.listen, sshd_argv(args.sshd, args.config), args.max_sessions,
                        args.max_per_source)
    signal.signal(signal.SIGTERM, endpoint.stop)
    signal.signal(signal.SIGINT, endpoint.stop)
    print(f"hpcgate tunnel endpoint on {', '.join(f'{h}:{p}' for h, p in args.listen)}", flush=True)
    endpoint.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
