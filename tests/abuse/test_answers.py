"""Every frame gets a frame back, and every door checks who is there (issue 21, rows 6 and 8),
against a real hub on both buses."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from agentcomm.core.auth import Authenticator, Role
from agentcomm.generated import agent_registration_service_pb2 as reg_pb
from agentcomm.generated import agent_registration_service_pb2_grpc as reg_grpc
from agentcomm.grpc_channel import open_channel
from tests.abuse.harness import SECRET, WAIT, Records, hub_process, under_attack
from tests.abuse.rawws import RawSocket, fragments
from tests.support.frontend import Frontend, of_type

pytestmark = pytest.mark.timeout(240)

AUTH = Authenticator(SECRET)


def nested_metadata(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


async def test_deep_metadata_is_refused_at_the_edge_every_time(
    bus: str, tmp_path: Path, records: Records
) -> None:
    """Row 6: TEXTs whose metadata nests 253 to 1,000 deep, each sent twice with the same id:
    every one answered invalid_message, the socket stays open, nothing reaches a broker."""
    with hub_process(bus, tmp_path) as target:
        async with (
            under_attack(target, records, "6 metadata 253-1000 deep", bound_mb=40) as notes,
            await Frontend.registered(target.ws_url, "deep") as deep,
        ):
            answers: list[str] = []
            for depth in (253, 254, 255, 300, 1000):
                for _ in range(2):
                    await deep.send(
                        '{"message_type": "TEXT", "text_payload": "x", "receiver_id": "echo", '
                        f'"message_id": "deep-{depth}", "metadata": {nested_metadata(depth)}}}'
                    )
                    error = await deep.next(
                        of_type("ERROR", in_reply_to_message_id=f"deep-{depth}")
                    )
                    answers.append(error["error_code"])
            notes["answers"] = sorted(set(answers))
            assert not deep.is_closed
        assert answers == ["invalid_message"] * 10


async def test_the_smaller_holes(bus: str, tmp_path: Path) -> None:
    """Row 8, with AUTH_SECRET set: /metrics needs a token; sessions and streams end with their
    token; a CANCEL of an unknown id and a TEXT re-using an answered id are answered; an agent's
    300-deep metadata is INVALID_ARGUMENT, not UNKNOWN naming a class; a 59 KB message in
    1-byte fragments is taken; half-open HTTP requests are closed; an agent's SYSTEM reaches
    only a frontend that wrote to it."""
    with hub_process(bus, tmp_path, "--http-request-timeout", "2", secret=SECRET) as target:
        async with httpx.AsyncClient(base_url=target.http_url, timeout=WAIT) as http:
            assert (await http.get("/metrics")).status_code == 401
            admin = {"Authorization": f"Bearer {AUTH.mint(Role.ADMIN, 'ops', 300)}"}
            assert (await http.get("/metrics", headers=admin)).status_code == 200

        frontend = await login(target.ws_url, ttl=3600)
        try:
            await answered_every_time(frontend)
            await fragmented_message_is_taken(target.server.http_port)
            await system_only_in_a_conversation(target.grpc_target, frontend)
        finally:
            await frontend.close()

        await session_and_stream_end_with_their_token(target.ws_url, target.grpc_target)
        await half_open_requests_are_closed(target.server.http_port, count=1500, timeout=2)


async def login(ws_url: str, *, ttl: float, capabilities: dict[str, Any] | None = None) -> Frontend:
    frontend = await Frontend.connect(ws_url)
    await frontend.send(
        {
            "message_type": "REGISTER_FRONTEND",
            "frontend_name": "user",
            "token": AUTH.mint(Role.FRONTEND, "user", ttl),
            "capabilities": capabilities or {},
        }
    )
    await frontend.next(of_type("REGISTER_FRONTEND_RESPONSE"), timeout=WAIT)
    return frontend


async def answered_every_time(frontend: Frontend) -> None:
    await frontend.send(
        {"message_type": "CANCEL", "message_id": "c-1", "in_reply_to_message_id": "never-sent"}
    )
    error = await frontend.next(of_type("ERROR", in_reply_to_message_id="c-1"), timeout=WAIT)
    assert error["error_code"] == "unknown_message"
    await frontend.send_text("once", receiver_id="echo", message_id="t-1")
    await frontend.next(of_type("REPLY", in_reply_to_message_id="t-1"), timeout=WAIT)
    await frontend.barrier(timeout=WAIT)  # the first one's echoes are all in, and dropped
    await frontend.send_text("again", receiver_id="echo", message_id="t-1")
    again = await frontend.next(
        lambda f: f.get("message_id") == "t-1" or f.get("in_reply_to_message_id") == "t-1",
        timeout=WAIT,
    )
    assert (again["message_type"], again.get("routing_status")) in (
        ("TEXT", "delivered"),
        ("ERROR", "error"),
    ), again


async def fragmented_message_is_taken(http_port: int) -> None:
    sock = await RawSocket.connect("127.0.0.1", http_port, receive_buffer=1 << 20)
    try:
        await sock.register("fragments", token=AUTH.mint(Role.FRONTEND, "user", 300))
        text = {
            "message_type": "TEXT",
            "message_id": "frag-1",
            "receiver_id": "echo",
            "text_payload": "f" * 59_000,
        }
        await sock.send_raw(fragments(json.dumps(text).encode(), 1))
        async with asyncio.timeout(WAIT):
            while True:
                received = await sock.read_frame()
                assert received.close_code is None, received.close_code
                if received.opcode == 1 and received.json().get("message_type") == "REPLY":
                    return
    finally:
        sock.abort()


async def system_only_in_a_conversation(grpc_target: str, frontend: Frontend) -> None:
    token = AUTH.mint(Role.AGENT, "nosy", 300)
    metadata = (("agentcomm-session", "nosy"),)
    async with open_channel(grpc_target, token=token) as channel:
        stub = reg_grpc.AgentRegistrationServiceStub(channel)
        await stub.RegisterAgent(
            reg_pb.AgentRegistrationRequest(agent_id="nosy", agent_name="nosy"),
            metadata=metadata,
            timeout=WAIT,
        )
        envelope = json.dumps(
            {
                "message_type": "SYSTEM",
                "receiver_id": frontend.frontend_id,
                "text_payload": "pushed",
                "message_id": "push-1",
            }
        )
        await stub.SendMessage(
            reg_pb.ChatMessage(agent_id="nosy", envelope_json=envelope),
            metadata=metadata,
            timeout=WAIT,
        )
        deep = (
            '{"message_type": "REPLY", "text_payload": "x", "metadata": '
            + nested_metadata(300)
            + "}"
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.SendMessage(
                reg_pb.ChatMessage(agent_id="nosy", envelope_json=deep),
                metadata=metadata,
                timeout=WAIT,
            )
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "class" not in (refused.value.details() or "")
    # The frontend never wrote to nosy: a round trip with echo later, still no SYSTEM.
    await frontend.send_text("after", receiver_id="echo", message_id="t-after")
    await frontend.next(of_type("REPLY", in_reply_to_message_id="t-after"), timeout=WAIT)
    assert [f for f in frontend.take_buffered() if f["message_type"] == "SYSTEM"] == []


async def session_and_stream_end_with_their_token(ws_url: str, grpc_target: str) -> None:
    started = time.monotonic()
    short = await login(ws_url, ttl=2)
    assert await short.wait_closed(timeout=WAIT) == 4001
    async with open_channel(grpc_target, token=AUTH.mint(Role.AGENT, "brief", 2)) as channel:
        stub = reg_grpc.AgentRegistrationServiceStub(channel)
        await stub.RegisterAgent(
            reg_pb.AgentRegistrationRequest(agent_id="brief", agent_name="brief"), timeout=WAIT
        )
        stream = stub.ReceiveCommands(reg_pb.CommandStreamRequest(agent_id="brief"))
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            async with asyncio.timeout(WAIT):
                await stream.read()
        assert ended.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert time.monotonic() - started < WAIT


async def half_open_requests_are_closed(http_port: int, *, count: int, timeout: float) -> None:
    """`count` connections that send half a request line and wait: all closed by the hub
    within its request timeout (and a margin)."""
    connections = []
    try:
        async with asyncio.timeout(WAIT):
            for _ in range(count):
                reader, writer = await asyncio.open_connection("127.0.0.1", http_port)
                writer.write(b"POST /api/agents/echo/commands HTTP/1.1\r\nHost: ")
                connections.append((reader, writer))
        async with asyncio.timeout(timeout + WAIT):
            for reader, _ in connections:
                await reader.read()  # EOF once the hub closed it
    finally:
        for _, writer in connections:
            writer.transport.abort()
