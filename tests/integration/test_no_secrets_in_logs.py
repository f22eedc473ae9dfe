"""Tokens and message bodies never reach the logs: a whole stack with AUTH_SECRET set, logging
everything down to DEBUG, carries chat turns and is fed bad tokens and bad frames that contain
them, and none of it appears in what was logged."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest
import websockets

from agentcomm.core.auth import Authenticator, Role
from agentcomm.dev import DevStack
from agentcomm.generated import agent_registration_service_pb2 as reg_pb
from agentcomm.generated import agent_registration_service_pb2_grpc as reg_grpc
from agentcomm.grpc_channel import open_channel
from agentcomm.server.testing import test_settings

SECRET = "a-secret-for-the-log-test-long-enough-for-hs256"
BODY = "body-marker-7f3a9c"  # in every chat text sent
TIMEOUT = 15.0
CLIENT_LOGGERS = ("websockets.client", "httpx", "httpcore")


@pytest.fixture
async def stack(caplog: pytest.LogCaptureFixture) -> AsyncIterator[DevStack]:
    caplog.set_level(logging.DEBUG)
    stack = DevStack(test_settings(auth_secret=SECRET, log_level="DEBUG"))
    await stack.start()
    try:
        yield stack
    finally:
        await stack.stop()


async def chat(url: str, register: dict[str, Any], text: str) -> dict[str, Any]:
    """Registers, sends `text` to echo and returns its REPLY."""
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"message_type": "REGISTER_FRONTEND", **register}))
        sent = False
        async with asyncio.timeout(TIMEOUT):
            async for raw in ws:
                frame = json.loads(raw)
                if frame["message_type"] == "REGISTER_FRONTEND_RESPONSE" and not sent:
                    await ws.send(
                        json.dumps(
                            {"message_type": "TEXT", "receiver_id": "echo", "text_payload": text}
                        )
                    )
                    sent = True
                elif frame["message_type"] in {"REPLY", "ERROR"}:
                    return frame
    raise AssertionError("no answer")


async def feed_bad_frames(url: str, frontend_token: str) -> None:
    """Frames that are refused, each carrying a body, on a registered socket."""
    async with websockets.connect(url) as ws:
        await ws.send(
            json.dumps(
                {"message_type": "REGISTER_FRONTEND", "frontend_name": "t", "token": frontend_token}
            )
        )
        for bad in (
            '{"message_type": "TEXT", "text_payload": "' + BODY,  # not JSON
            json.dumps({"message_type": "SHOUT", "text_payload": BODY}),  # unknown type
            json.dumps({"message_type": "TEXT", "text_payload": BODY, "receiver_id": 7}),
            json.dumps({"message_type": "TEXT", "text_payload": BODY * 20_000}),  # oversize
        ):
            try:
                await ws.send(bad)
                async with asyncio.timeout(TIMEOUT):
                    while json.loads(await ws.recv())["message_type"] != "ERROR":
                        pass
            except websockets.ConnectionClosed:
                return


async def refused_socket(url: str, register: dict[str, Any]) -> None:
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"message_type": "REGISTER_FRONTEND", **register}))
        async with asyncio.timeout(TIMEOUT):
            with pytest.raises(websockets.ConnectionClosed):
                await _read_until_closed(ws)


async def _read_until_closed(ws: websockets.ClientConnection) -> None:
    while True:
        await ws.recv()


async def test_tokens_and_bodies_are_never_logged(
    stack: DevStack, caplog: pytest.LogCaptureFixture
) -> None:
    auth = Authenticator(SECRET)
    good = auth.mint(Role.FRONTEND, "web", 300)
    in_query = auth.mint(Role.FRONTEND, "web-2", 300)
    admin = auth.mint(Role.ADMIN, "ops", 300)
    wrong_role = auth.mint(Role.AGENT, "echo", 300)
    forged = Authenticator("another-secret-that-is-also-long-enough!!").mint(Role.ADMIN, "x", 300)
    malformed = "not-a-jwt-" + "9d1e" * 8
    url = f"ws://127.0.0.1:{stack.server.http_port}/ws"
    http = f"http://127.0.0.1:{stack.server.http_port}"
    grpc_target = f"127.0.0.1:{stack.server.grpc_port}"

    reply = await chat(url, {"frontend_name": "t", "token": good}, f"hello {BODY} one")
    assert reply["message_type"] == "REPLY"
    assert BODY in reply["text_payload"]
    reply = await chat(f"{url}?token={in_query}", {"frontend_name": "t"}, f"hi {BODY} two")
    assert reply["message_type"] == "REPLY"
    await feed_bad_frames(url, good)
    for bad in (malformed, forged, wrong_role):
        await refused_socket(url, {"frontend_name": "t", "token": bad})

    async with httpx.AsyncClient(base_url=http, timeout=TIMEOUT) as client:
        assert (
            await client.get("/api/agents", headers={"Authorization": f"Bearer {admin}"})
        ).status_code == 200
        for bad in (malformed, forged, good):
            response = await client.get("/api/agents", headers={"Authorization": f"Bearer {bad}"})
            assert response.status_code in {401, 403}

    for bad in (malformed, forged):
        async with open_channel(grpc_target, token=bad) as channel:
            stub = reg_grpc.AgentRegistrationServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.RegisterAgent(
                    reg_pb.AgentRegistrationRequest(agent_id="a", agent_name="a"),
                    timeout=TIMEOUT,
                )
            assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED

    # What the test's own clients log (their requests, with the tokens in them) is not the hub's.
    records = [r for r in caplog.records if not r.name.startswith(CLIENT_LOGGERS)]
    logged = "\n".join(caplog.handler.format(r) for r in records)
    assert len(records) > 20, "the stack logged almost nothing: is capture working?"
    for secret in (SECRET, good, in_query, admin, wrong_role, forged, malformed, BODY):
        assert secret not in logged, f"{secret[:12]}… was logged"
