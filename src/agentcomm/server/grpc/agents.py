"""AgentRegistrationService: registration, heartbeats, commands and chat work over gRPC."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator

import grpc

from agentcomm.bus.base import BusError
from agentcomm.core.auth import Role
from agentcomm.core.commands import CommandOutcome
from agentcomm.core.errors import HubError
from agentcomm.core.presence import parse_reported_status
from agentcomm.generated import agent_registration_service_pb2 as pb
from agentcomm.generated import agent_registration_service_pb2_grpc as pb_grpc
from agentcomm.protocol.codec import decode_envelope
from agentcomm.protocol.errors import ProtocolError
from agentcomm.protocol.ids import new_agent_id
from agentcomm.protocol.models import MAX_NAME_CHARS
from agentcomm.protocol.rules import reserved_agent_id_refusal
from agentcomm.protocol.transports import is_known_transport, transport_refusal
from agentcomm.server.grpc.context import (
    Context,
    abort_for,
    acting_session,
    authorize,
    caller_session,
    ownership_refusal,
    require_id,
    require_map,
)
from agentcomm.server.grpc.inboxes import AgentInbox
from agentcomm.server.grpc.outputs import serve_outputs
from agentcomm.server.grpc.parts import GrpcParts

log = logging.getLogger(__name__)

DEFAULT_MESSAGE_PREFETCH = 32
MAX_MESSAGE_PREFETCH = 1000
# How long ReceiveMessageBatches waits for more messages to share a write while the agent has
# at least BATCH_BUSY earlier ones in hand: then it is backlogged, and their wait is longer than
# this one. An agent with less to do gets each message at once.
BATCH_LINGER = 0.003
BATCH_BUSY = 4


class AgentRegistrationServicer(pb_grpc.AgentRegistrationServiceServicer):
    def __init__(self, parts: GrpcParts) -> None:
        self._parts = parts

    async def RegisterAgent(
        self, request: pb.AgentRegistrationRequest, context: Context
    ) -> pb.AgentRegistrationResponse:
        principal = await authorize(self._parts.auth, context, Role.AGENT, request.agent_id or None)
        if request.agent_id:
            agent_id = request.agent_id
        elif principal is not None and principal.role is Role.AGENT:
            agent_id = principal.subject  # an agent's token names the id it registers as
        else:
            agent_id = new_agent_id()
        await require_id(context, agent_id, "agent_id")
        reserved = reserved_agent_id_refusal(agent_id)
        if reserved is not None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, reserved)
        if len(request.agent_name) > MAX_NAME_CHARS:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"agent_name may have at most {MAX_NAME_CHARS} characters.",
            )
        capabilities = await require_map(context, dict(request.capabilities), "capabilities")
        await self._require_reachable_transport(request.transport, context)
        try:
            await self._parts.declare_agent_queue(agent_id)
        except BusError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"Message bus unavailable: {exc}")
        try:
            # One agent id in the whole cluster: another process may not take it on another hub.
            self._parts.cluster.check_free(agent_id, caller_session(context))
            record = self._parts.registry.register(
                agent_id,
                request.agent_name,
                caller_session(context),
                version=request.version[:64],
                capabilities=capabilities,
                hostname=request.hostname[:256],
                platform=request.platform[:256],
            )
        except HubError as exc:
            await abort_for(context, exc)
        return pb.AgentRegistrationResponse(
            success=True,
            message=f"Agent {record.agent_id} registered.",
            server_assigned_id=record.agent_id,
            heartbeat_interval=self._parts.settings.heartbeat_interval,
            server_id=self._parts.server_id,
            message_bus=self._parts.settings.message_bus,
        )

    async def _require_reachable_transport(self, transport: str, context: Context) -> None:
        """Refuses an agent whose work would wait where it does not read: listed online, it
        would look healthy and answer nothing."""
        if not is_known_transport(transport):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Unknown transport {transport[:32]!r}; use grpc, amqp or memory.",
            )
        refusal = transport_refusal(transport, self._parts.settings.message_bus)
        if refusal is not None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, refusal)

    async def UnregisterAgent(
        self, request: pb.AgentUnregistrationRequest, context: Context
    ) -> pb.AgentUnregistrationResponse:
        await require_id(context, request.agent_id, "agent_id")
        await authorize(self._parts.auth, context, Role.AGENT, request.agent_id)
        try:
            self._parts.registry.unregister(request.agent_id, self._session(context))
        except HubError as exc:
            await abort_for(context, exc)
        inbox = self._parts.inboxes.get(request.agent_id)
        if inbox is not None:
            await self._parts.inboxes.close(inbox)
        return pb.AgentUnregistrationResponse(
            success=True, message=f"Agent {request.agent_id} unregistered."
        )

    async def SendHeartbeat(
        self, request: pb.HeartbeatRequest, context: Context
    ) -> pb.HeartbeatResponse:
        await require_id(context, request.agent_id, "agent_id")
        await authorize(self._parts.auth, context, Role.AGENT, request.agent_id)
        status = parse_reported_status(request.status)
        if status is None:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Unknown status {request.status[:32]!r}; use IDLE, BUSY or PAUSED.",
            )
        metrics = await require_map(context, dict(request.metrics), "metrics")
        try:
            self._parts.registry.heartbeat(
                request.agent_id, self._session(context), status, metrics
            )
        except HubError as exc:
            await abort_for(context, exc)
        return pb.HeartbeatResponse(success=True, interval=self._parts.settings.heartbeat_interval)

    async def ReceiveCommands(
        self, request: pb.CommandStreamRequest, context: Context
    ) -> AsyncIterator[pb.Command]:
        await require_id(context, request.agent_id, "agent_id")
        await authorize(self._parts.auth, context, Role.AGENT, request.agent_id)
        await self._require_own(request.agent_id, context)
        registry, commands = self._parts.registry, self._parts.commands
        stream = commands.open_stream(request.agent_id)
        registry.stream_opened(request.agent_id)
        # Tells the agent its stream is registered: commands sent from now on reach it.
        await context.send_initial_metadata(())
        try:
            while True:
                command = await stream.queue.get()
                yield pb.Command(
                    command_id=command.command_id,
                    type=command.type,
                    content=command.content,
                    parameters=command.parameters,
                    is_cancellation=command.is_cancellation,
                )
        finally:
            commands.close_stream(stream)
            registry.stream_closed(request.agent_id)

    async def SendCommandResult(
        self, request: pb.CommandResult, context: Context
    ) -> pb.CommandResultResponse:
        await require_id(context, request.command_id, "command_id")
        await require_id(context, request.agent_id, "agent_id")
        await authorize(self._parts.auth, context, Role.AGENT, request.agent_id)
        await self._require_own(request.agent_id, context)
        outcome = CommandOutcome(
            command_id=request.command_id,
            agent_id=request.agent_id,
            success=request.success,
            output=request.output,
            error_message=request.error_message,
            exit_code=request.exit_code,
            execution_time_ms=request.execution_time_ms,
        )
        if not self._parts.commands.complete(outcome):
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"No command {request.command_id} is waiting for agent {request.agent_id}.",
            )
        return pb.CommandResultResponse(received=True, message="Result received.")

    async def ReceiveMessages(
        self, request: pb.MessageStreamRequest, context: Context
    ) -> AsyncIterator[pb.ChatMessage]:
        inbox = await self._open_inbox(request, context)
        try:
            while (item := await inbox.next()) is not None:
                yield pb.ChatMessage(
                    agent_id=request.agent_id,
                    message_id=item.message_id,
                    envelope_json=item.body.decode(),
                    traceparent=item.traceparent,
                )
        finally:
            await self._close_inbox(inbox)

    async def ReceiveMessageBatches(
        self, request: pb.MessageStreamRequest, context: Context
    ) -> AsyncIterator[pb.ChatMessages]:
        inbox = await self._open_inbox(request, context)
        agent_id = request.agent_id
        try:
            while items := await inbox.next_batch(BATCH_LINGER, busy=BATCH_BUSY):
                yield pb.ChatMessages(
                    messages=[
                        pb.ChatMessage(
                            agent_id=agent_id,
                            message_id=item.message_id,
                            envelope_json=item.body.decode(),
                            traceparent=item.traceparent,
                        )
                        for item in items
                    ]
                )
        finally:
            await self._close_inbox(inbox)

    async def _open_inbox(self, request: pb.MessageStreamRequest, context: Context) -> AgentInbox:
        await require_id(context, request.agent_id, "agent_id")
        await authorize(self._parts.auth, context, Role.AGENT, request.agent_id)
        await self._require_own(request.agent_id, context)
        if request.prefetch < 0 or request.prefetch > MAX_MESSAGE_PREFETCH:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"prefetch must be between 0 and {MAX_MESSAGE_PREFETCH}.",
            )
        # Counted open before the inbox opens: opening it ends the stream it replaces, and the
        # agent must not look stream-less (offline, with STREAM_GRACE 0) in between.
        registry = self._parts.registry
        registry.stream_opened(request.agent_id)
        try:
            await self._parts.declare_agent_queue(request.agent_id)
            inbox = await self._parts.inboxes.open(
                request.agent_id, request.prefetch or DEFAULT_MESSAGE_PREFETCH
            )
        except BaseException as exc:
            registry.stream_closed(request.agent_id)
            if isinstance(exc, BusError):
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"Message bus unavailable: {exc}")
            raise
        try:
            await context.send_initial_metadata(())
        except BaseException:
            await self._close_inbox(inbox)  # the caller never gets it to close
            raise
        return inbox

    async def _close_inbox(self, inbox: AgentInbox) -> None:
        await self._parts.inboxes.close(inbox)
        self._parts.registry.stream_closed(inbox.agent_id)

    async def AckMessage(self, request: pb.MessageAck, context: Context) -> pb.MessageAckResponse:
        await require_id(context, request.agent_id, "agent_id")
        await authorize(self._parts.auth, context, Role.AGENT, request.agent_id)
        await require_id(context, request.message_id, "message_id")
        await self._require_own(request.agent_id, context)
        inbox = self._parts.inboxes.get(request.agent_id)
        if inbox is None:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"Agent {request.agent_id} has no open ReceiveMessages stream.",
            )
        if not inbox.acknowledge(request.message_id, request.handled):
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"Message {request.message_id} is not awaiting an acknowledgement.",
            )
        return pb.MessageAckResponse(acknowledged=True)

    async def SendMessage(
        self, request: pb.ChatMessage, context: Context
    ) -> pb.SendMessageResponse:
        await require_id(context, request.agent_id, "agent_id")
        await authorize(self._parts.auth, context, Role.AGENT, request.agent_id)
        if len(request.envelope_json) > self._parts.settings.max_message_bytes:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"The message is larger than {self._parts.settings.max_message_bytes} bytes.",
            )
        await self._require_own(request.agent_id, context)
        try:
            message = decode_envelope(request.envelope_json)
            published = await self._parts.router.accept_from_agent(
                request.agent_id,
                message,
                traceparent=request.traceparent or _traceparent_in(context),
            )
        except ProtocolError as exc:
            await abort_for(context, exc)
        except BusError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"Message bus unavailable: {exc}")
        return pb.SendMessageResponse(accepted=True, message_id=published.message_id)

    async def SendOutputs(
        self, request_iterator: AsyncIterable[pb.AgentOutputs], context: Context
    ) -> AsyncIterator[pb.AgentOutputResults]:
        # The token is checked before anything is read: it must at least be an agent's.
        principal = await authorize(self._parts.auth, context, Role.AGENT)
        async for results in serve_outputs(self._parts, request_iterator, context, principal):
            yield results

    async def _require_own(self, agent_id: str, context: Context) -> None:
        refusal = ownership_refusal(self._parts.registry, agent_id, self._session(context))
        if refusal is not None:
            await context.abort(*refusal)

    def _session(self, context: Context) -> str | None:
        return acting_session(context, self._parts.auth)


def _traceparent_in(context: Context) -> str:
    """A `traceparent` in the call's metadata (a unary call carries one turn's context there,
    as gRPC instrumentations do); empty when there is none."""
    for key, value in context.invocation_metadata() or ():
        if key == "traceparent":
            return value if isinstance(value, str) else value.decode("ascii", "replace")
    return ""
