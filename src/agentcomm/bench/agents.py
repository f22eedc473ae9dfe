"""Agents as the hub sees them over gRPC, without the SDK: presence changes on demand."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import grpc
import grpc.aio

from agentcomm.generated import agent_registration_service_pb2 as registration
from agentcomm.generated import agent_registration_service_pb2_grpc as registration_grpc

CALL_TIMEOUT = 10.0


class AgentControl:
    """Registers, unregisters and streams for made-up agents on one gRPC channel."""

    def __init__(self, target: str) -> None:
        self.channel = grpc.aio.insecure_channel(target)
        self.stub = registration_grpc.AgentRegistrationServiceStub(self.channel)
        self._streams: dict[str, Any] = {}

    async def register(self, agent_id: str) -> None:
        response = await self.stub.RegisterAgent(
            registration.AgentRegistrationRequest(
                agent_id=agent_id,
                agent_name=agent_id,
                version="bench",
                hostname="bench",
                platform="bench",
            ),
            timeout=CALL_TIMEOUT,
        )
        if not response.success:
            raise RuntimeError(f"RegisterAgent {agent_id} refused: {response.message}")

    async def unregister(self, agent_id: str) -> None:
        await self.stub.UnregisterAgent(
            registration.AgentUnregistrationRequest(agent_id=agent_id), timeout=CALL_TIMEOUT
        )

    def open_stream(self, agent_id: str) -> None:
        """Opens ReceiveCommands for the agent (kept until `lose_stream`)."""
        self._streams[agent_id] = self.stub.ReceiveCommands(
            registration.CommandStreamRequest(agent_id=agent_id)
        )

    async def wait_stream_open(self, agent_id: str) -> None:
        call = self._streams[agent_id]
        await call.wait_for_connection()

    def lose_stream(self, agent_id: str) -> None:
        """Breaks the agent's command stream as a crashed agent would."""
        call = self._streams.pop(agent_id, None)
        if call is not None:
            call.cancel()

    async def close(self) -> None:
        for call in self._streams.values():
            call.cancel()
        self._streams.clear()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await self.channel.close(grace=None)
