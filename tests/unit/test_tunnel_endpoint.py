"""The tunnel endpoint hands each connection to its own process, and caps connections per source."""

from __future__ import annotations

import socket
import threading
import time

from gateway.tunnel.endpoint import Endpoint


def test_one_source_cannot_take_more_than_its_share_of_sessions() -> None:
    # `sleep` stands in for `sshd -i`: it holds the connection open without a word, as a client
    # that never logs in would make sshd do until LoginGraceTime.
    endpoint = Endpoint([("127.0.0.1", 0)], ["sleep", "30"], max_sessions=10, max_per_source=2)
    port = endpoint.socks[0].getsockname()[1]
    server = threading.Thread(target=endpoint.serve, daemon=True)
    server.start()
    clients = []
    try:
        for _ in range(3):
            c = socket.create_connection(("127.0.0.1", port), timeout=5)
            c.settimeout(2)
            clients.append(c)
            time.sleep(0.2)  # accepted in order
        assert clients[2].recv(1) == b""  # the third from this address is closed at once
        for held in clients[:2]:
            held.settimeout(0.5)
            try:
                held.recv(1)
                raise AssertionError("a session within the cap was closed")
            except TimeoutError:
                pass  # still open, its process holding it
        assert len(endpoint.children) == 2
        assert all(source == "127.0.0.1" for _, source in endpoint.children)
    finally:
        endpoint.stop()
        server.join(timeout=5)
        for c in clients:
            c.close()
        for child, _ in endpoint.children:
            child.wait(timeout=5)
        for s in endpoint.socks:
            s.close()


def test_a_connection_arriving_while_it_stops_gets_no_session_that_outlives_it() -> None:
    """Stopping ends every session, and the jobs' ssh reconnect at once (0.2 s): a connection
    accepted after stop() but before the loop ends must not start an sshd that nobody ends (found
    by benchmarks.chaos: a job's tunnel survived the endpoint's restart, reparented to init)."""
    endpoint = Endpoint([("127.0.0.1", 0)], ["sleep", "30"])
    port = endpoint.socks[0].getsockname()[1]
    endpoint.stop()  # as the SIGTERM handler would, with the loop still in select()
    client = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        endpoint._accept(endpoint.socks[0])  # the loop's pending accept
        client.settimeout(2)
        assert client.recv(1) == b""  # closed at once
        assert not [c for c, _ in endpoint.children if c.poll() is None]
    finally:
        client.close()
        for child, _ in endpoint.children:
            child.kill()
            child.wait()
