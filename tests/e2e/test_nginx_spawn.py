"""A spawn through the real hub behind hpcgate-nginx: JupyterLab's API, a kernel's websocket, the
hub SIGKILLed and restarted (nginx and the route stay), a spoofed X-Real-Ip, and the route gone
after the stop."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator

import aiohttp
import pytest

from gateway.lab.procs import pid_alive
from gateway.lab.site import PINNED_NODES, with_changes
from tests.helpers.hub import Hub, fetch, running_hub, user_token

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def hub(lab: dict) -> Iterator[Hub]:
    with running_hub(lab, "nginx", ("alice",), proxy="nginx",
                     policy=with_changes(PINNED_NODES, {"connection": {"mode": "direct"}})) as h:
        yield h


def routes(hub: Hub) -> dict:
    status, body = hub.api("GET", "/proxy")
    assert status == 200, body
    return body


async def execute(hub: Hub, token: str, kernel: str, code: str) -> dict:
    """Run `code` in the kernel over its websocket channel, as JupyterLab does; the reply."""
    url = f"{hub.hub.url}/user/alice/api/kernels/{kernel}/channels"
    msg_id = uuid.uuid4().hex
    message = {"header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "alice",
                          "session": uuid.uuid4().hex, "version": "5.3"},
               "parent_header": {}, "metadata": {}, "channel": "shell",
               "content": {"code": code, "silent": False, "store_history": False,
                           "user_expressions": {}, "allow_stdin": False}}
    async with aiohttp.ClientSession() as s, s.ws_connect(
            url, headers={"Authorization": f"token {token}"}) as ws:
        await ws.send_str(json.dumps(message))

        async def reply() -> dict:
            while True:
                msg = json.loads(await ws.receive_str())
                if msg.get("parent_header", {}).get("msg_id") == msg_id \
                        and msg["msg_type"] == "execute_reply":
                    return msg

        return await asyncio.wait_for(reply(), 30)


@pytest.fixture
def alice_stopped_after(hub: Hub) -> Iterator[None]:
    """alice's server never outlives this test, whatever fails (the lab is shared)."""
    yield
    if hub.server("alice") is not None:
        hub.stop("alice")


def test_spawn_kernel_websocket_hub_restart_and_stop_through_nginx(hub: Hub,
                                                                   alice_stopped_after: None) -> None:
    nginx = hub.hub.proxy_pid()
    assert pid_alive(nginx)
    status, _ = hub.spawn("alice")
    assert status in (201, 202), _
    hub.wait_ready("alice")
    assert routes(hub)["/user/alice/"]["data"]["user"] == "alice"
    state = hub.hub.dir / "nginx" / "routes.json"  # the persisted truth, in nginx's table too
    assert "/user/alice/" in json.loads(state.read_text())["routes"]
    code, body = hub.get("/user/alice/api")
    assert code == 200 and "version" in json.loads(body)

    token = user_token(hub, "alice")
    code, _, body = fetch(hub, "/user/alice/api/kernels", token, method="POST", body=b"{}",
                          headers={"Content-Type": "application/json"})
    assert code == 201, body
    kernel = json.loads(body)["id"]
    reply = asyncio.run(execute(hub, token, kernel, "6 * 7"))
    assert reply["content"]["status"] == "ok"

    hub.hub.kill()  # a crash: nginx runs on, and the restarted hub adopts it
    hub.hub.start()
    assert hub.hub.proxy_pid() == nginx
    assert f"Adopting nginx {nginx}" in hub.hub.log.read_text()
    assert routes(hub)["/user/alice/"]["target"]
    code, _ = hub.get("/user/alice/api")
    assert code == 200
    assert asyncio.run(execute(hub, token, kernel, "1 + 1"))["content"]["status"] == "ok"

    # A client-supplied address never reaches the hub (it believes X-Real-Ip): nginx overwrites it.
    code, _, _ = fetch(hub, "/hub/api/proxy?spoofed=1", hub.hub.service_token,
                       headers={"X-Real-Ip": "6.6.6.6", "X-Forwarded-For": "6.6.6.6"})
    assert code == 200
    line = "GET /hub/api/proxy?spoofed=1 (hpcgate-tests@127.0.0.1)"
    deadline = time.monotonic() + 5  # the hub writes its access line as the answer leaves
    while line not in hub.hub.log.read_text():
        assert time.monotonic() < deadline, "the spoofed request's line never reached the log"
        time.sleep(0.05)
    assert "6.6.6.6" not in hub.hub.log.read_text()

    hub.stop("alice")
    assert "/user/alice/" not in routes(hub)
    assert "/user/alice/" not in json.loads(state.read_text())["routes"]
    # nginx's table dropped it too: the hub answers now, not JupyterLab's API.
    assert not hub.get("/user/alice/api")[1].lstrip().startswith('{"version"')
