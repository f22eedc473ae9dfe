"""AUTH_SECRET set: a session or stream lives as long as its token, unless refreshed.

A frontend's socket ends with ERROR unauthorized and close 4001 when the token it registered
with expires; REFRESH_TOKEN with a fresh one moves that moment on. gRPC streams (commands,
messages, agent status, outputs) end with UNAUTHENTICATED at their token's expiry.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from agentcomm.core.auth import Authenticator, Role
from agentcomm.generated import agent_registration_service_pb2 as reg_pb
from agentcomm.generated import agent_registration_service_pb2_grpc as reg_grpc
from agentcomm.generated import agent_status_service_pb2 as status_pb
from agentcomm.generated import agent_status_service_pb2_grpc as status_grpc
from agentcomm.grpc_channel import open_channel
from agentcomm.server.testing import HubEndpoints, running_hub, test_settings
from tests.support.frontend import Frontend, of_type

SECRET = "a-test-secret-that-is-long-enough-for-hs256"
AUTH = Authenticator(SECRET)
# A token's exp is in whole seconds: one minted for 2 s expires within 1-2 s.
SHORT = 2
WAIT = 10.0

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def hub() -> AsyncIterator[HubEndpoints]:
    async with running_hub(test_settings(auth_secret=SECRET)) as endpoints:
        yield endpoints


async def registered_with(hub: HubEndpoints, token: str) -> Frontend:
    frontend = await Frontend.connect(hub.ws_url)
    await frontend.send(
        {"message_type": "REGISTER_FRONTEND", "frontend_name": "short", "token": token}
    )
    response = await frontend.next(of_type("REGISTER_FRONTEND_RESPONSE"))
    assert response["status"] == "success"
    return frontend


async def test_a_frontend_session_ends_when_its_token_expires(hub: HubEndpoints) -> None:
    frontend = await registered_with(hub, AUTH.mint(Role.FRONTEND, "web", SHORT))
    started = time.monotonic()
    code = await frontend.wait_closed(timeout=WAIT)
    assert code == 4001
    assert time.monotonic() - started <= SHORT + 1
    errors = [f for f in frontend.take_buffered() if f["message_type"] == "ERROR"]
    assert [e["error_code"] for e in errors] == ["unauthorized"]
    assert "expired" in errors[0]["text_payload"]


async def test_a_refreshed_token_keeps_the_session(hub: HubEndpoints) -> None:
    frontend = await registered_with(hub, AUTH.mint(Role.FRONTEND, "web", SHORT))
    try:
        await frontend.send(
            {
                "message_type": "REFRESH_TOKEN",
                "message_id": "refresh-1",
                "token": AUTH.mint(Role.FRONTEND, "web", 300),
            }
        )
        response = await frontend.next(of_type("REFRESH_TOKEN_RESPONSE"))
        assert (response["status"], response["in_reply_to_message_id"]) == (
            "success",
            "refresh-1",
        )
        assert response["expires_at"].endswith("Z")
        # Past the first token's expiry, the socket still answers.
        with pytest.raises(AssertionError, match="not closed"):
            await frontend.wait_closed(timeout=SHORT + 1)
        assert frontend.non_presence(await frontend.barrier()) == []
    finally:
        await frontend.close()


@pytest.mark.parametrize(
    "bad", ["not-a-jwt", AUTH.mint(Role.AGENT, "echo", 300)], ids=["malformed", "agent-role"]
)
async def test_a_bad_refresh_is_refused_and_changes_nothing(hub: HubEndpoints, bad: str) -> None:
    frontend = await registered_with(hub, AUTH.mint(Role.FRONTEND, "web", SHORT))
    await frontend.send({"message_type": "REFRESH_TOKEN", "message_id": "r2", "token": bad})
    error = await frontend.next(of_type("ERROR"))
    assert (error["error_code"], error["in_reply_to_message_id"]) == ("unauthorized", "r2")
    assert await frontend.wait_closed(timeout=WAIT) == 4001


def _agent_channel(hub: HubEndpoints, ttl: float) -> grpc.aio.Channel:
    return open_channel(hub.grpc_target, token=AUTH.mint(Role.AGENT, "short-lived", ttl))


async def _drain(call: Any) -> None:
    async with asyncio.timeout(WAIT):
        async for _ in call:
            pass


async def _ends_unauthenticated(call: Any) -> None:
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await _drain(call)
    assert ended.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "expired" in (ended.value.details() or "")
    assert time.monotonic() - started <= SHORT + 1


async def test_agent_streams_end_when_the_token_expires(hub: HubEndpoints) -> None:
    async with _agent_channel(hub, SHORT) as channel:
        stub = reg_grpc.AgentRegistrationServiceStub(channel)
        await stub.RegisterAgent(
            reg_pb.AgentRegistrationRequest(agent_id="short-lived", agent_name="s"), timeout=WAIT
        )
        commands = stub.ReceiveCommands(reg_pb.CommandStreamRequest(agent_id="short-lived"))
        messages = stub.ReceiveMessages(reg_pb.MessageStreamRequest(agent_id="short-lived"))
        await asyncio.gather(_ends_unauthenticated(commands), _ends_unauthenticated(messages))


async def test_the_status_stream_ends_when_the_broker_token_expires(hub: HubEndpoints) -> None:
    token = AUTH.mint(Role.BROKER, "broker_short", SHORT)
    async with open_channel(hub.grpc_target, token=token) as channel:
        call = status_grpc.AgentStatusServiceStub(channel).SubscribeToAgentStatus(
            status_pb.AgentStatusRequest(broker_id="broker_short")
        )
        await _ends_unauthenticated(call)


async def test_streams_with_a_long_token_stay(hub: HubEndpoints) -> None:
    async with _agent_channel(hub, 300) as channel:
        stub = reg_grpc.AgentRegistrationServiceStub(channel)
        await stub.RegisterAgent(
            reg_pb.AgentRegistrationRequest(agent_id="short-lived", agent_name="s"), timeout=WAIT
        )
        commands = stub.ReceiveCommands(reg_pb.CommandStreamRequest(agent_id="short-lived"))
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(SHORT + 1):
                await commands.read()
        commands.cancel()
