"""Fuzzing the gRPC decoders: arbitrary bytes as the request of every method get a status
quickly (never a hang or a crashed server), and the server serves normally afterwards."""

from __future__ import annotations

import asyncio
import random

import grpc
import pytest

from agentcomm.generated import agent_registration_service_pb2 as reg_pb
from agentcomm.generated import agent_registration_service_pb2_grpc as reg_grpc
from agentcomm.generated import agent_status_service_pb2 as status_pb
from agentcomm.generated import broker_registration_service_pb2 as broker_pb
from agentcomm.server.testing import running_hub
from tests.support.fuzzing import mutated

CALL_TIMEOUT = 5.0
PAYLOADS_PER_METHOD = 60

# (full method name, streams its response)
METHODS = [
    (f"/{service.full_name}/{method.name}", method.server_streaming)
    for descriptor in (reg_pb.DESCRIPTOR, status_pb.DESCRIPTOR, broker_pb.DESCRIPTOR)
    for service in descriptor.services_by_name.values()
    for method in service.methods
]


def payloads(seed: int) -> list[bytes]:
    """Random bytes, and valid requests with bytes flipped, truncated or appended."""
    rng = random.Random(seed)
    valid = [
        reg_pb.AgentRegistrationRequest(
            agent_id="fuzz", capabilities={"k": "v"}
        ).SerializeToString(),
        reg_pb.HeartbeatRequest(agent_id="fuzz", status="BUSY").SerializeToString(),
        reg_pb.ChatMessage(
            agent_id="fuzz", envelope_json='{"message_type":"REPLY"}'
        ).SerializeToString(),
        reg_pb.MessageStreamRequest(agent_id="fuzz", prefetch=3).SerializeToString(),
    ]
    out: list[bytes] = [b"", b"\x00", b"\xff" * 16]
    while len(out) < PAYLOADS_PER_METHOD:
        out.append(mutated(rng, rng.choice(valid), random_size=200))
    return out


async def _call(channel: grpc.aio.Channel, method: str, streaming: bool, body: bytes) -> None:
    try:
        if streaming:
            call = channel.unary_stream(method)(body, timeout=CALL_TIMEOUT)
            # A stream that is accepted may stay open: one response or a status is enough.
            async with asyncio.timeout(CALL_TIMEOUT):
                await call.read()
            call.cancel()
        else:
            await channel.unary_unary(method)(body, timeout=CALL_TIMEOUT)
    except grpc.aio.AioRpcError as error:
        code, details = error.code(), error.details()
    except TimeoutError:
        return  # an accepted stream with nothing to say yet
    else:
        return
    # Bad input is named as such, never an unexplained UNKNOWN or INTERNAL.
    assert code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), (method, body, details)


@pytest.mark.parametrize(("method", "streaming"), METHODS, ids=[m for m, _ in METHODS])
async def test_random_requests_get_a_status_and_leave_the_server_healthy(
    method: str, streaming: bool
) -> None:
    async with running_hub() as hub, grpc.aio.insecure_channel(hub.grpc_target) as channel:
        for body in payloads(seed=hash(method) & 0xFFFF):
            async with asyncio.timeout(CALL_TIMEOUT * 2):
                await _call(channel, method, streaming, body)
        stub = reg_grpc.AgentRegistrationServiceStub(channel)
        registered = await stub.RegisterAgent(
            reg_pb.AgentRegistrationRequest(agent_id="after-fuzz"), timeout=CALL_TIMEOUT
        )
        assert registered.success
