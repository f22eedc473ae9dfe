"""AUTH_SECRET set: every door asks for a valid token, and a token speaks only for its subject."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import grpc
import httpx
import jwt
import pytest
import websockets

from agentcomm.broker.service import ReferenceBroker
from agentcomm.core.auth import Authenticator, Role
from agentcomm.generated import agent_registration_service_pb2 as reg_pb
from agentcomm.generated import agent_registration_service_pb2_grpc as reg_grpc
from agentcomm.generated import agent_status_service_pb2 as status_pb
from agentcomm.generated import agent_status_service_pb2_grpc as status_grpc
from agentcomm.grpc_channel import open_channel
from agentcomm.server.testing import HubEndpoints, running_hub, test_settings

SECRET = "a-test-secret-that-is-long-enough-for-hs256"
TIMEOUT = 10.0
AUTH = Authenticator(SECRET)


def token(role: Role, sub: str, ttl: float = 300) -> str:
    return AUTH.mint(role, sub, ttl)


def expired_token() -> str:
    now = int(time.time())
    claims = {"sub": "web", "role": "frontend", "iat": now - 100, "exp": now - 50}
    return jwt.encode(claims, SECRET, algorithm="HS256")


def unsigned_token() -> str:
    claims = {"sub": "web", "role": "admin", "exp": int(time.time()) + 300}
    return jwt.encode(claims, None, algorithm="none")


BAD_TOKENS = {
    "missing": None,
    "malformed": "not-a-jwt",
    "expired": expired_token(),
    "wrong-signature": jwt.encode(
        {"sub": "web", "role": "frontend", "exp": int(time.time()) + 300},
        "another-secret-that-is-also-long-enough!!",
        algorithm="HS256",
    ),
    "alg-none": unsigned_token(),
}


@pytest.fixture
async def hub() -> AsyncIterator[HubEndpoints]:
    async with running_hub(test_settings(auth_secret=SECRET)) as endpoints:
        yield endpoints


async def register_frontend(
    url: str, frontend_token: str | None
) -> tuple[list[dict[str, object]], int | None]:
    """Frames received after REGISTER_FRONTEND, and the close code if the socket was closed."""
    frames: list[dict[str, object]] = []
    async with websockets.connect(url) as ws:
        request: dict[str, object] = {"message_type": "REGISTER_FRONTEND", "frontend_name": "t"}
        if frontend_token is not None:
            request["token"] = frontend_token
        await ws.send(json.dumps(request))
        try:
            async with asyncio.timeout(TIMEOUT):
                while len(frames) < 2:
                    frames.append(json.loads(await ws.recv()))
        except websockets.ConnectionClosed as closed:
            return frames, closed.rcvd.code if closed.rcvd else None
        return frames, None


@pytest.mark.parametrize("name", list(BAD_TOKENS))
async def test_websocket_refuses_bad_tokens(hub: HubEndpoints, name: str) -> None:
    frames, close_code = await register_frontend(hub.ws_url, BAD_TOKENS[name])
    assert close_code == 1008
    assert frames[0]["message_type"] == "ERROR"
    assert frames[0]["error_code"] == "unauthorized"


async def test_websocket_refuses_agent_token(hub: HubEndpoints) -> None:
    frames, close_code = await register_frontend(hub.ws_url, token(Role.AGENT, "a"))
    assert close_code == 1008
    assert frames[0]["error_code"] == "unauthorized"


async def test_websocket_accepts_frontend_token_in_frame_and_query(hub: HubEndpoints) -> None:
    frames, close_code = await register_frontend(hub.ws_url, token(Role.FRONTEND, "web"))
    assert close_code is None
    assert frames[0]["message_type"] == "REGISTER_FRONTEND_RESPONSE"
    query_url = f"{hub.ws_url}?token={token(Role.FRONTEND, 'web')}"
    frames, close_code = await register_frontend(query_url, None)
    assert close_code is None
    assert frames[0]["message_type"] == "REGISTER_FRONTEND_RESPONSE"


@pytest.mark.parametrize("name", list(BAD_TOKENS))
async def test_grpc_refuses_bad_tokens(hub: HubEndpoints, name: str) -> None:
    bad = BAD_TOKENS[name]
    async with open_channel(hub.grpc_target, token=bad or "") as channel:
        stub = reg_grpc.AgentRegistrationServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.RegisterAgent(
                reg_pb.AgentRegistrationRequest(agent_id="a", agent_name="a"), timeout=TIMEOUT
            )
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
        status = status_grpc.AgentStatusServiceStub(channel)
        stream = status.SubscribeToAgentStatus(status_pb.AgentStatusRequest(broker_id="b"))
        with pytest.raises(grpc.aio.AioRpcError) as refused_stream:
            async with asyncio.timeout(TIMEOUT):
                await stream.read()
        assert refused_stream.value.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_agent_token_speaks_only_for_its_agent(hub: HubEndpoints) -> None:
    async with open_channel(hub.grpc_target, token=token(Role.AGENT, "agent-a")) as channel:
        stub = reg_grpc.AgentRegistrationServiceStub(channel)
        for call in (
            stub.RegisterAgent(
                reg_pb.AgentRegistrationRequest(agent_id="agent-b"), timeout=TIMEOUT
            ),
            stub.SendHeartbeat(reg_pb.HeartbeatRequest(agent_id="agent-b"), timeout=TIMEOUT),
            stub.UnregisterAgent(
                reg_pb.AgentUnregistrationRequest(agent_id="agent-b"), timeout=TIMEOUT
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
        stream = stub.ReceiveMessages(reg_pb.MessageStreamRequest(agent_id="agent-b"))
        with pytest.raises(grpc.aio.AioRpcError) as refused_stream:
            async with asyncio.timeout(TIMEOUT):
                await stream.read()
        assert refused_stream.value.code() is grpc.StatusCode.PERMISSION_DENIED
        # An empty id registers as the token's subject.
        registered = await stub.RegisterAgent(reg_pb.AgentRegistrationRequest(), timeout=TIMEOUT)
        assert registered.server_assigned_id == "agent-a"
        beat = await stub.SendHeartbeat(
            reg_pb.HeartbeatRequest(agent_id="agent-a", status="IDLE"), timeout=TIMEOUT
        )
        assert beat.success


async def test_http_api_needs_an_admin_token(hub: HubEndpoints) -> None:
    async with httpx.AsyncClient(base_url=hub.http_url, timeout=TIMEOUT) as client:
        assert (await client.get("/api/agents")).status_code == 401
        expired = {"Authorization": f"Bearer {expired_token()}"}
        assert (await client.get("/api/agents", headers=expired)).status_code == 401
        frontend = {"Authorization": f"Bearer {token(Role.FRONTEND, 'web')}"}
        assert (await client.get("/api/agents", headers=frontend)).status_code == 403
        admin = {"Authorization": f"Bearer {token(Role.ADMIN, 'ops')}"}
        assert (await client.get("/api/agents", headers=admin)).status_code == 200
        assert (await client.get("/healthz")).status_code == 200


async def test_broker_with_its_token_registers_and_follows_presence(hub: HubEndpoints) -> None:
    broker = ReferenceBroker(
        hub.bus, hub.grpc_target, broker_id="broker-1", token=token(Role.BROKER, "broker-1")
    )
    await broker.start()
    try:
        record = hub.hub.brokers.get("broker-1")
        assert record is not None
        assert record.registered_via == "grpc"
    finally:
        await broker.stop()
    impostor = ReferenceBroker(
        hub.bus,
        hub.grpc_target,
        broker_id="broker-2",
        token=token(Role.BROKER, "broker-1"),
        start_timeout=3.0,
    )
    with pytest.raises(Exception, match=r"(?i)permission|may not"):
        await impostor.start()
