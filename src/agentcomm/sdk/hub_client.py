"""The agent's side of AgentRegistrationService, behind a small protocol.

`HubClient` is what the Agent needs from the server; `GrpcHubClient` speaks it over gRPC and
maps gRPC status codes to the SDK's errors at this edge, so nothing else imports grpc. Tests
substitute an in-memory HubClient.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import grpc
import grpc.aio

from agentcomm.generated import agent_registration_service_pb2 as pb
from agentcomm.generated.agent_registration_service_pb2_grpc import AgentRegistrationServiceStub
from agentcomm.grpc_channel import CLIENT_KEEPALIVE, ClientTls, open_channel
from agentcomm.protocol import Envelope, encode_for_bus
from agentcomm.sdk.commands import Command, CommandOutcome
from agentcomm.sdk.errors import (
    AgentError,
    HubUnavailable,
    NotRegistered,
    RegistrationRefused,
)

log = logging.getLogger(__name__)

# Sent with every call, so that the server can tell this process re-registering after a
# reconnect from another process claiming an agent id that is still live.
SESSION_METADATA_KEY = "agentcomm-session"

_UNAVAILABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


# gRPC's own reconnect backoff grows to two minutes by default; an agent should find a restarted
# server within seconds, as its own retry loop expects.
_CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 5000),
    *CLIENT_KEEPALIVE,
)


class HubRefused(AgentError):
    """The server refused a call as invalid or not allowed."""


@dataclass(frozen=True, slots=True)
class RegistrationRequest:
    agent_id: str
    agent_name: str
    version: str
    capabilities: Mapping[str, str] = field(default_factory=dict)
    hostname: str = ""
    platform: str = ""


@dataclass(frozen=True, slots=True)
class Registration:
    """The server's answer: the id to use and how often it wants heartbeats."""

    agent_id: str
    heartbeat_interval: int | None = None
    server_id: str = ""


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    """A chat message from the ReceiveMessages stream, still as JSON text."""

    message_id: str
    envelope_json: str


class HubClient(Protocol):
    """The calls an agent makes on the server."""

    async def register(self, request: RegistrationRequest) -> Registration: ...

    async def unregister(self, agent_id: str) -> None: ...

    async def heartbeat(self, agent_id: str, status: str, metrics: Mapping[str, str]) -> int | None:
        """Returns the interval the server asks for, if it named one."""

    def commands(self, agent_id: str) -> AsyncGenerator[Command, None]:
        """The command stream; ends (or raises) when the server closes it."""

    async def send_command_result(
        self, agent_id: str, command_id: str, outcome: CommandOutcome
    ) -> None: ...

    def messages(self, agent_id: str, prefetch: int) -> AsyncGenerator[IncomingMessage, None]:
        """Chat work for agents that do not consume their bus queue themselves."""

    async def ack(self, agent_id: str, message_id: str, handled: bool) -> None: ...

    async def send_message(self, agent_id: str, envelope: Envelope) -> None: ...

    async def close(self) -> None: ...


def map_rpc_error(exc: grpc.aio.AioRpcError, call: str) -> AgentError:
    """The SDK error for a failed call: retry later, re-register, or give up."""
    code = exc.code()
    text = f"{call} failed: {code.name} {exc.details() or ''}".strip()
    if code is grpc.StatusCode.NOT_FOUND:
        return NotRegistered(text)
    if code in _UNAVAILABLE_CODES:
        return HubUnavailable(text)
    return HubRefused(text)


class GrpcHubClient:
    """HubClient over one gRPC channel; the channel itself reconnects after an outage."""

    def __init__(
        self,
        target: str,
        session: str,
        *,
        token: str = "",
        call_timeout: float = 10.0,
        tls: ClientTls | None = None,
    ) -> None:
        self.target = target
        self._channel = open_channel(target, options=_CHANNEL_OPTIONS, tls=tls)
        self._stub = AgentRegistrationServiceStub(self._channel)
        metadata = [(SESSION_METADATA_KEY, session)]
        if token:
            # With AUTH_SECRET set on the server, every call must carry the agent's token.
            metadata.append(("authorization", f"Bearer {token}"))
        self._metadata = tuple(metadata)
        self._timeout = call_timeout

    async def register(self, request: RegistrationRequest) -> Registration:
        try:
            response = await self._stub.RegisterAgent(
                pb.AgentRegistrationRequest(
                    agent_id=request.agent_id,
                    agent_name=request.agent_name,
                    version=request.version,
                    capabilities=dict(request.capabilities),
                    hostname=request.hostname,
                    platform=request.platform,
                ),
                metadata=self._metadata,
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as exc:
            error = map_rpc_error(exc, "RegisterAgent")
            if isinstance(error, HubRefused):
                raise RegistrationRefused(str(error)) from exc
            raise error from exc
        if not response.success:
            raise RegistrationRefused(response.message or "The server refused the registration.")
        return Registration(
            agent_id=response.server_assigned_id or request.agent_id,
            heartbeat_interval=response.heartbeat_interval or None,
            server_id=response.server_id,
        )

    async def unregister(self, agent_id: str) -> None:
        try:
            await self._stub.UnregisterAgent(
                pb.AgentUnregistrationRequest(agent_id=agent_id),
                metadata=self._metadata,
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise map_rpc_error(exc, "UnregisterAgent") from exc

    async def heartbeat(self, agent_id: str, status: str, metrics: Mapping[str, str]) -> int | None:
        try:
            response = await self._stub.SendHeartbeat(
                pb.HeartbeatRequest(agent_id=agent_id, status=status, metrics=dict(metrics)),
                metadata=self._metadata,
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise map_rpc_error(exc, "SendHeartbeat") from exc
        if not response.success:
            raise NotRegistered(f"The server does not accept heartbeats from {agent_id}.")
        return response.interval or None

    async def commands(self, agent_id: str) -> AsyncGenerator[Command, None]:
        call = self._stub.ReceiveCommands(
            pb.CommandStreamRequest(agent_id=agent_id), metadata=self._metadata
        )
        try:
            async for item in call:
                yield Command(
                    command_id=item.command_id,
                    type=item.type,
                    content=item.content,
                    parameters=dict(item.parameters),
                    is_cancellation=item.is_cancellation,
                )
        except grpc.aio.AioRpcError as exc:
            raise map_rpc_error(exc, "ReceiveCommands") from exc
        finally:
            call.cancel()

    async def send_command_result(
        self, agent_id: str, command_id: str, outcome: CommandOutcome
    ) -> None:
        try:
            await self._stub.SendCommandResult(
                pb.CommandResult(
                    command_id=command_id,
                    agent_id=agent_id,
                    success=outcome.success,
                    output=outcome.output,
                    error_message=outcome.error_message,
                    exit_code=outcome.exit_code,
                    execution_time_ms=outcome.execution_time_ms,
                ),
                metadata=self._metadata,
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise map_rpc_error(exc, "SendCommandResult") from exc

    async def messages(self, agent_id: str, prefetch: int) -> AsyncGenerator[IncomingMessage, None]:
        call = self._stub.ReceiveMessages(
            pb.MessageStreamRequest(agent_id=agent_id, prefetch=prefetch),
            metadata=self._metadata,
        )
        try:
            async for item in call:
                yield IncomingMessage(item.message_id, item.envelope_json)
        except grpc.aio.AioRpcError as exc:
            raise map_rpc_error(exc, "ReceiveMessages") from exc
        finally:
            call.cancel()

    async def ack(self, agent_id: str, message_id: str, handled: bool) -> None:
        try:
            await self._stub.AckMessage(
                pb.MessageAck(agent_id=agent_id, message_id=message_id, handled=handled),
                metadata=self._metadata,
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise map_rpc_error(exc, "AckMessage") from exc

    async def send_message(self, agent_id: str, envelope: Envelope) -> None:
        try:
            response = await self._stub.SendMessage(
                pb.ChatMessage(
                    agent_id=agent_id,
                    message_id=envelope.message_id,
                    envelope_json=encode_for_bus(envelope).decode(),
                ),
                metadata=self._metadata,
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise map_rpc_error(exc, "SendMessage") from exc
        if not response.accepted:
            raise HubRefused(f"The server did not accept message {envelope.message_id}.")

    async def close(self) -> None:
        await self._channel.close()
