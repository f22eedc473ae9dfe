"""The load balancer the cluster tests run behind works before any hub relies on it: nginx with
the shipped deploy/nginx.conf spreads requests round robin over three upstreams, carries a
WebSocket, and keeps answering when an upstream is killed, handshakes included.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import Counter
from collections.abc import AsyncIterator
from http import HTTPStatus

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from tests.conftest import require
from tests.support.nginx import nginx_binary, nginx_in_front

pytestmark = pytest.mark.timeout(60)

WAIT = 10.0


@contextlib.asynccontextmanager
async def upstream() -> AsyncIterator[Server]:
    """A stand-in hub: GET anything answers with its own port; /ws echoes every message after
    its port and a colon."""

    async def echo(connection: ServerConnection) -> None:
        port = connection.local_address[1]
        async for message in connection:
            await connection.send(f"{port}:{message!s}")

    def answer_http(connection: ServerConnection, request: Request) -> Response | None:
        if request.path == "/ws":
            return None
        port = connection.local_address[1]
        return connection.respond(HTTPStatus.OK, f"{port}\n")

    async with serve(echo, "127.0.0.1", 0, process_request=answer_http) as server:
        yield server


def port_of(server: Server) -> int:
    port: int = next(iter(server.sockets)).getsockname()[1]
    return port


async def answering_ports(client: httpx.AsyncClient, url: str, count: int) -> Counter[int]:
    answered: Counter[int] = Counter()
    for i in range(count):
        path = ("/api/agents", "/healthz", "/readyz")[i % 3]
        response = await client.get(url + path)
        assert response.status_code == HTTPStatus.OK, response.text
        answered[int(response.text)] += 1
    return answered


async def ws_echo(url: str, text: str) -> int:
    """Opens a WebSocket, checks one echo, returns the port of the upstream that answered."""
    async with asyncio.timeout(WAIT), connect(url) as socket:
        await socket.send(text)
        answer = await socket.recv()
    assert isinstance(answer, str)
    port, echoed = answer.split(":", 1)
    assert echoed == text
    return int(port)


async def test_nginx_balances_round_robin_carries_websockets_and_skips_a_dead_upstream() -> None:
    require(nginx_binary() is not None, "nginx")
    async with contextlib.AsyncExitStack() as stack:
        servers = [await stack.enter_async_context(upstream()) for _ in range(3)]
        ports = [port_of(server) for server in servers]
        proxy = await stack.enter_async_context(nginx_in_front(ports))
        client = await stack.enter_async_context(httpx.AsyncClient(timeout=WAIT))

        async with asyncio.timeout(30):
            answered = await answering_ports(client, proxy.url, 30)
            # Round robin with no stickiness: every upstream gets its share.
            assert set(answered) == set(ports), proxy.logs()
            assert min(answered.values()) >= 5, (answered, proxy.logs())

            # WebSockets are not sticky either: three in a row land on the three upstreams.
            opened = {await ws_echo(proxy.ws_url, f"socket {i}") for i in range(3)}
            assert opened == set(ports), (opened, proxy.logs())

            dead = servers[0]
            dead.close()
            await dead.wait_closed()
            survivors = set(ports[1:])

            # Round robin sends one of three consecutive handshakes to the dead upstream:
            # refused there, it is retried on the next one.
            opened = {await ws_echo(proxy.ws_url, f"after kill {i}") for i in range(3)}
            assert opened == survivors, (opened, proxy.logs())
            answered = await answering_ports(client, proxy.url, 30)
            assert set(answered) == survivors, (answered, proxy.logs())

        # nginx saw the refused connection on a handshake, retried it, and passive health
        # then kept the dead upstream out of the rotation.
        errors = proxy.error_log()
        assert f'"GET /ws HTTP/1.1", upstream: "http://127.0.0.1:{ports[0]}/ws"' in errors, errors
        assert "upstream server temporarily disabled" in errors, errors
        directory, pid = proxy.directory, proxy.pid

    assert not directory.exists()
    assert pid is not None
    # Neither the master nor a worker is left in nginx's process group.
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
