"""The HTTP API refuses cheaply: a protected path without a valid token before its body is read,
a body over HTTP_BODY_BYTES by its Content-Length or as it arrives, a request whose head or body
does not arrive within HTTP_REQUEST_TIMEOUT; and /metrics needs a token with AUTH_SECRET set,
unless METRICS_PUBLIC."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from agentcomm.core.auth import Authenticator, Role
from agentcomm.server.testing import HubEndpoints, running_hub, test_settings

SECRET = "a-test-secret-that-is-long-enough-for-hs256"
AUTH = Authenticator(SECRET)
BODY_LIMIT = 64 * 1024
REQUEST_TIMEOUT = 1.0
WAIT = 10.0

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def hub() -> AsyncIterator[HubEndpoints]:
    settings = test_settings(
        auth_secret=SECRET, http_body_bytes=BODY_LIMIT, http_request_timeout=REQUEST_TIMEOUT
    )
    async with running_hub(settings) as endpoints:
        yield endpoints


async def raw_exchange(hub: HubEndpoints, data: bytes, *, then_wait: float = WAIT) -> bytes:
    """Writes `data` on a fresh connection and returns everything the server sends until it
    closes the connection (or `then_wait` passes)."""
    async with asyncio.timeout(WAIT):
        reader, writer = await asyncio.open_connection("127.0.0.1", hub.server.http_port)
    try:
        writer.write(data)
        received = b""
        async with asyncio.timeout(then_wait):
            await writer.drain()
            while chunk := await reader.read(65536):
                received += chunk
        return received
    finally:
        writer.close()


def post_head(length: int, token: str | None = None) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (
        f"POST /api/agents/echo/commands HTTP/1.1\r\nHost: x\r\n{auth}"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


async def test_no_token_is_refused_before_the_body_is_read(hub: HubEndpoints) -> None:
    # Announces 200 MB and sends none of it: the answer comes at once all the same.
    started = time.monotonic()
    answer = await raw_exchange(hub, post_head(200 * 1024 * 1024))
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert b"www-authenticate: Bearer" in answer
    assert time.monotonic() - started < REQUEST_TIMEOUT


async def test_a_declared_body_over_the_limit_is_refused_before_it_is_read(
    hub: HubEndpoints,
) -> None:
    admin = AUTH.mint(Role.ADMIN, "ops", 300)
    answer = await raw_exchange(hub, post_head(BODY_LIMIT + 1, admin))
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


async def test_a_chunked_body_over_the_limit_is_refused_as_it_arrives(hub: HubEndpoints) -> None:
    admin = AUTH.mint(Role.ADMIN, "ops", 300)
    async with asyncio.timeout(WAIT):
        reader, writer = await asyncio.open_connection("127.0.0.1", hub.server.http_port)
    head = (
        "POST /api/agents/echo/commands HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {admin}\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    chunk = b"4000\r\n" + b"x" * 0x4000 + b"\r\n"

    async def keep_sending() -> None:
        writer.write(head)
        for _ in range(1000):  # 16 MB at most, should the server keep reading
            writer.write(chunk)
            await writer.drain()

    sender = asyncio.create_task(keep_sending())
    try:
        async with asyncio.timeout(WAIT):
            answer = await reader.readuntil(b"\r\n\r\n")
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        writer.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer


async def test_a_body_within_the_limit_reaches_the_api(hub: HubEndpoints) -> None:
    admin = AUTH.mint(Role.ADMIN, "ops", 300)
    async with httpx.AsyncClient(base_url=hub.http_url, timeout=WAIT) as client:
        response = await client.post(
            "/api/agents/nobody/commands",
            json={"type": "ping", "content": "x" * 1000},
            headers={"Authorization": f"Bearer {admin}"},
        )
    assert response.status_code == 404


async def test_a_request_head_that_stops_halfway_is_closed(hub: HubEndpoints) -> None:
    started = time.monotonic()
    answer = await raw_exchange(hub, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert time.monotonic() - started < REQUEST_TIMEOUT + 2


async def test_a_connection_that_sends_nothing_is_closed(hub: HubEndpoints) -> None:
    answer = await raw_exchange(hub, b"")
    assert answer.startswith(b"HTTP/1.1 408"), answer


async def test_a_body_that_stops_halfway_is_answered_408(hub: HubEndpoints) -> None:
    admin = AUTH.mint(Role.ADMIN, "ops", 300)
    answer = await raw_exchange(hub, post_head(1000, admin) + b'{"type": "pi')
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]


async def test_keep_alive_requests_each_get_their_own_deadline(hub: HubEndpoints) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    async with asyncio.timeout(WAIT):
        reader, writer = await asyncio.open_connection("127.0.0.1", hub.server.http_port)
    try:
        for _ in range(3):
            writer.write(request)
            async with asyncio.timeout(WAIT):
                head = await reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("role", "status"),
    [(None, 401), (Role.FRONTEND, 403), (Role.ADMIN, 200)],
    ids=["no-token", "frontend-token", "admin-token"],
)
async def test_metrics_need_an_admin_token(
    hub: HubEndpoints, role: Role | None, status: int
) -> None:
    # Minted here, not when the module is collected: a slow run must not find it expired.
    token = AUTH.mint(role, "ops", 300) if role is not None else None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(base_url=hub.http_url, timeout=WAIT) as client:
        response = await client.get("/metrics", headers=headers)
    assert response.status_code == status
    if status == 200:
        assert "agentcomm_frontends_connected" in response.text


async def test_metrics_public_serves_them_without_a_token() -> None:
    settings = test_settings(auth_secret=SECRET, metrics_public=True)
    async with (
        running_hub(settings) as hub,
        httpx.AsyncClient(base_url=hub.http_url, timeout=WAIT) as client,
    ):
        assert (await client.get("/metrics")).status_code == 200
        assert (await client.get("/api/agents")).status_code == 401


async def test_an_open_hub_serves_metrics_to_anyone() -> None:
    async with (
        running_hub(test_settings()) as hub,
        httpx.AsyncClient(base_url=hub.http_url, timeout=WAIT) as client,
    ):
        assert (await client.get("/metrics")).status_code == 200
