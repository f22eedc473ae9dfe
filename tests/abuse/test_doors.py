"""Attacks on the hub's doors (issue 21, rows 3, 5 and 7): refused cheaply, in memory and in
everyone else's latency, and work for an agent goes only to the session that registered it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest

from agentcomm.generated import agent_registration_service_pb2 as reg_pb
from agentcomm.generated import agent_registration_service_pb2_grpc as reg_grpc
from tests.abuse.harness import SECRET, WAIT, Records, Target, hub_process, under_attack
from tests.abuse.rawws import BINARY, RawSocket, frame

pytestmark = pytest.mark.timeout(240)

MB = 1024 * 1024


async def post_without_token(target: Target, size: int) -> tuple[bytes, float]:
    """POSTs a command announcing a `size`-byte body without a token, and sends the first
    megabyte of it; returns the status line and how long the answer took. (The rest would not
    be read: the hub answers, and closes the connection, before reading any of it.)"""
    async with asyncio.timeout(WAIT):
        reader, writer = await asyncio.open_connection("127.0.0.1", target.server.http_port)
    started = time.monotonic()
    writer.write(
        (
            "POST /api/agents/echo/commands HTTP/1.1\r\nHost: x\r\n"
            f"Content-Type: application/json\r\nContent-Length: {size}\r\n\r\n"
        ).encode()
        + b'{"type": "'
        + b"x" * (MB - 10)
    )
    try:
        async with asyncio.timeout(WAIT):
            status = await reader.readline()
        return status, time.monotonic() - started
    finally:
        writer.transport.abort()


async def test_huge_bodies_without_a_token_are_refused_before_they_are_read(
    bus: str, tmp_path: Path, records: Records
) -> None:
    """Row 3: four POSTs of 100 and 200 MB bodies without a token at once, against a hub with
    AUTH_SECRET, while a logged-in user talks."""
    with hub_process(bus, tmp_path, secret=SECRET) as target:
        async with under_attack(
            target, records, "3 100-200 MB bodies, no token", bound_mb=40
        ) as notes:
            answers = await asyncio.gather(
                *(post_without_token(target, size * MB) for size in (100, 200, 100, 200))
            )
            notes["answered_in_s"] = [round(seconds, 3) for _, seconds in answers]
        assert all(status.startswith(b"HTTP/1.1 401") for status, _ in answers), answers


async def binary_flood(target: Target, seconds: float) -> tuple[int, list[str], int | None]:
    """Sends binary frames as fast as the socket takes them for `seconds` (or until the
    server ends it), reading what comes back meanwhile; returns how many it sent, the error
    codes it got and the close code (None: the server dropped the connection)."""
    sock = await RawSocket.connect("127.0.0.1", target.server.http_port, receive_buffer=1 << 20)
    await sock.register("flood")
    reading = asyncio.create_task(sock.read_until_closed(seconds + WAIT))
    garbage = frame(BINARY, b"\x00" * 64) * 64
    sent = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not reading.done():
        try:
            # A server that stopped reading makes a write stall.
            await sock.send_raw(garbage, timeout=1.0)
        except (ConnectionError, OSError, TimeoutError):
            break
        sent += 64
        await asyncio.sleep(0)
    try:
        frames, code = await reading
    finally:
        sock.abort()
    errors = [f["error_code"] for f in frames if f.get("message_type") == "ERROR"]
    return sent, errors, code


async def test_binary_frames_count_against_the_rate_limit(
    bus: str, tmp_path: Path, records: Records
) -> None:
    """Row 5: four sockets send binary frames as fast as they can: each is told once, then
    closed as a flood (4029)."""
    with hub_process(bus, tmp_path) as target:
        async with under_attack(target, records, "5 binary frame floods", bound_mb=40) as notes:
            floods = await asyncio.gather(*(binary_flood(target, 5.0) for _ in range(4)))
            notes.update(frames_sent=[sent for sent, _, _ in floods])
        for _, errors, code in floods:
            assert code == 4029
            assert errors.count("invalid_message") == 1, errors


async def test_an_agents_work_goes_only_to_the_session_that_registered_it(
    bus: str, tmp_path: Path, records: Records
) -> None:
    """Row 7: on an open hub, ReceiveMessages("echo") without a session header is refused;
    echo keeps all its messages (the bystander's answers), and a forged REPLY goes nowhere."""
    with hub_process(bus, tmp_path) as target:
        async with (
            under_attack(
                target, records, "7 stream for echo without a session", bound_mb=40
            ) as notes,
            grpc.aio.insecure_channel(target.grpc_target) as channel,
        ):
            stub = reg_grpc.AgentRegistrationServiceStub(channel)
            stolen = stub.ReceiveMessages(reg_pb.MessageStreamRequest(agent_id="echo"))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                async with asyncio.timeout(WAIT):
                    await stolen.read()
            forged = stub.SendMessage(
                reg_pb.ChatMessage(
                    agent_id="echo", envelope_json='{"message_type": "REPLY", "text_payload": "x"}'
                ),
                timeout=WAIT,
            )
            with pytest.raises(grpc.aio.AioRpcError) as forged_refused:
                await forged
            notes["status"] = refused.value.code().name
        assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert forged_refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
