"""The agent's side of AgentRegistrationService, behind a small protocol.

`HubClient` is what the Agent needs from the server; `GrpcHubClient` speaks it over gRPC and
maps gRPC status codes to the SDK's errors at this edge, so nothing else imports grpc. Tests
substitute an in-memory HubClient.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import grpc
import grpc.aio

from agentcomm.generated import agent_registration_service_pb2 as pb
from agentcomm.generated.agent_registration_service_pb2_grpc import AgentRegistrationServiceStub
from agentcomm.grpc_channel import (
    CLIENT_KEEPALIVE,
    CLIENT_MAX_RECEIVE_BYTES,
    REQUEST_BYTES_ACCEPTED,
    ClientTls,
    open_channel,
)
from agentcomm.protocol import Envelope, encode_for_bus
from agentcomm.sdk.commands import Command, CommandOutcome
from agentcomm.sdk.errors import AgentError, HubUnavailable, NotRegistered, RegistrationRefused
from agentcomm.sdk.grpc_errors import HubRefused, map_rpc_error, map_status
from agentcomm.sdk.output_stream import OutputResult, OutputStream, StreamUnsupported

log = logging.getLogger(__name__)

# Sent with every call, so that the server can tell this process re-registering after a
# reconnect from another process claiming an agent id that is still live.
SESSION_METADATA_KEY = "agentcomm-session"

# gRPC's own reconnect backoff grows to two minutes by default; an agent should find a restarted
# server within seconds, as its own retry loop expects. A batch of messages may be larger than
# gRPC's default receive limit (see CLIENT_MAX_RECEIVE_BYTES).
_CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 5000),
    ("grpc.max_receive_message_length", CLIENT_MAX_RECEIVE_BYTES),
    *CLIENT_KEEPALIVE,
)


@dataclass(frozen=True, slots=True)
class RegistrationRequest:
    agent_id: str
    agent_name: str
    version: str
    capabilities: Mapping[str, str] = field(default_factory=dict)
    hostname: str = ""
    platform: str = ""
    # How work reaches the agent (protocol/transports.py): the server refuses one that cannot
    # reach its bus.
    transport: str = ""


@dataclass(frozen=True, slots=True)
class Registration:
    """The server's answer: the id to use, how often it wants heartbeats, the bus it runs."""

    agent_id: str
    heartbeat_interval: int | None = None
    server_id: str = ""
    # Empty from a server that does not say.
    message_bus: str = ""


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    """A chat message from the ReceiveMessages stream, still as JSON text."""

    message_id: str
    envelope_json: str
    # The hub's delivery span when tracing is on; empty otherwise.
    traceparent: str = ""


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

    async def send_message(
        self, agent_id: str, envelope: Envelope, *, ack: str = "", traceparent: str = ""
    ) -> bool:
        """Publishes `envelope`; with `ack`, then acknowledges that message as handled.
        `traceparent` is the trace context it belongs to (tracing on), or empty.

        Raises when the envelope was not accepted (and then nothing was acknowledged); returns
        whether the acknowledgement was applied."""

    async def close(self) -> None: ...


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
        max_message_bytes: int = 65536,
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
        # Replies and acks go on one SendOutputs stream while the server offers it.
        self._use_stream = True
        # Messages come several to a write while the server offers it.
        self._use_batches = True
        self._outputs: OutputStream | None = None
        self._retired: set[asyncio.Future[None]] = set()
        # Envelopes up to this size go on the stream, and a write holds at most what every
        # server accepts in one request (its MAX_MESSAGE_BYTES may differ from this agent's):
        # a request over the server's limit would end the stream for every item on it.
        self._item_limit = max(1024, min(max_message_bytes, REQUEST_BYTES_ACCEPTED) // 2 - 1024)

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
                    transport=request.transport,
                ),
                metadata=self._metadata,
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as exc:
            error = map_rpc_error(exc, "RegisterAgent")
            if isinstance(error, HubRefused):
                # The server's own sentence says what to change; the status adds nothing to it.
                raise RegistrationRefused(exc.details() or str(error)) from exc
            raise error from exc
        if not response.success:
            raise RegistrationRefused(response.message or "The server refused the registration.")
        return Registration(
            agent_id=response.server_assigned_id or request.agent_id,
            heartbeat_interval=response.heartbeat_interval or None,
            server_id=response.server_id,
            message_bus=response.message_bus,
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
        request = pb.MessageStreamRequest(agent_id=agent_id, prefetch=prefetch)
        if self._use_batches:
            batches = self._stub.ReceiveMessageBatches(request, metadata=self._metadata)
            try:
                async for batch in batches:
                    for item in batch.messages:
                        yield IncomingMessage(item.message_id, item.envelope_json, item.traceparent)
            except grpc.aio.AioRpcError as exc:
                if exc.code() is not grpc.StatusCode.UNIMPLEMENTED:
                    raise map_rpc_error(exc, "ReceiveMessageBatches") from exc
                # An older server: nothing was delivered on this stream yet.
                log.info("The server has no ReceiveMessageBatches; using ReceiveMessages")
                self._use_batches = False
            else:
                return
            finally:
                batches.cancel()
        call = self._stub.ReceiveMessages(request, metadata=self._metadata)
        try:
            async for item in call:
                yield IncomingMessage(item.message_id, item.envelope_json, item.traceparent)
        except grpc.aio.AioRpcError as exc:
            raise map_rpc_error(exc, "ReceiveMessages") from exc
        finally:
            call.cancel()

    async def ack(self, agent_id: str, message_id: str, handled: bool) -> None:
        stream = self._output_stream(agent_id)
        if stream is not None:
            try:
                result = await self._result_of(stream.submit("", message_id, handled=handled))
            except StreamUnsupported as exc:
                self._stream_unsupported(exc)
            else:
                if result.code is not grpc.StatusCode.OK:
                    raise map_status(result.code, result.detail, "SendOutputs (ack)")
                return
        try:
            await self._stub.AckMessage(
                pb.MessageAck(agent_id=agent_id, message_id=message_id, handled=handled),
                metadata=self._metadata,
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise map_rpc_error(exc, "AckMessage") from exc

    async def send_message(
        self, agent_id: str, envelope: Envelope, *, ack: str = "", traceparent: str = ""
    ) -> bool:
        encoded = encode_for_bus(envelope)
        envelope_json = encoded.decode()
        # A large envelope goes on its own call, where it does not hold up the items behind it.
        stream = self._output_stream(agent_id) if len(encoded) <= self._item_limit else None
        if stream is not None:
            try:
                result = await self._result_of(
                    stream.submit(envelope_json, ack, traceparent=traceparent)
                )
            except StreamUnsupported as exc:
                self._stream_unsupported(exc)
            else:
                if not result.accepted:
                    raise map_status(result.code, result.detail, "SendOutputs")
                if ack and not result.acknowledged:
                    log.info("Could not ack message %s: %s", ack, result.detail)
                return result.acknowledged
        try:
            response = await self._stub.SendMessage(
                pb.ChatMessage(
                    agent_id=agent_id,
                    message_id=envelope.message_id,
                    envelope_json=envelope_json,
                    traceparent=traceparent,
                ),
                metadata=self._metadata,
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise map_rpc_error(exc, "SendMessage") from exc
        if not response.accepted:
            raise HubRefused(f"The server did not accept message {envelope.message_id}.")
        if not ack:
            return False
        try:
            await self.ack(agent_id, ack, True)
        except AgentError as exc:
            log.info("Could not ack message %s: %s", ack, exc)
            return False
        return True

    def _output_stream(self, agent_id: str) -> OutputStream | None:
        """The open SendOutputs stream for `agent_id` (a new one after a failure); None when
        the server has no such stream."""
        if not self._use_stream:
            return None
        stream = self._outputs
        if stream is None or stream.failure is not None or stream.agent_id != agent_id:
            if stream is not None:
                self._retired.add(asyncio.ensure_future(stream.close()))
                self._retired = {task for task in self._retired if not task.done()}
            stream = self._outputs = OutputStream(
                self._stub, agent_id, self._metadata, max_request_bytes=REQUEST_BYTES_ACCEPTED
            )
        return stream

    async def _result_of(self, future: asyncio.Future[OutputResult]) -> OutputResult:
        # A plain timer that fails the item's own future: asyncio.timeout would cancel and
        # uncancel the waiting task, several times the work, for each reply and ack.
        timer = asyncio.get_running_loop().call_later(
            self._timeout, _time_out, future, self._timeout
        )
        try:
            return await future
        finally:
            timer.cancel()

    def _stream_unsupported(self, exc: StreamUnsupported) -> None:
        if self._use_stream:
            log.info("%s; using SendMessage and AckMessage calls instead", exc)
        self._use_stream = False

    async def close(self) -> None:
        if self._outputs is not None:
            await self._outputs.close()
        if self._retired:
            await asyncio.wait(self._retired)
        await self._channel.close()


def _time_out(future: asyncio.Future[OutputResult], timeout: float) -> None:
    if not future.done():
        future.set_exception(HubUnavailable(f"SendOutputs: no result within {timeout:g} s."))
