"""A gRPC agent and a gRPC status subscriber (broker side), on the generated stubs only."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import grpc

from agentcomm.generated import agent_registration_service_pb2 as reg_pb
from agentcomm.generated import agent_registration_service_pb2_grpc as reg_grpc
from agentcomm.generated import agent_status_service_pb2 as status_pb
from agentcomm.generated import agent_status_service_pb2_grpc as status_grpc
from agentcomm.generated import broker_registration_service_pb2 as broker_pb
from agentcomm.generated import broker_registration_service_pb2_grpc as broker_grpc
from tests.support.waiting import DEFAULT_TIMEOUT

SESSION_KEY = "agentcomm-session"
# Each helper gets its own connection, as a separate agent process would: without this, grpc
# shares one connection between channels to the same target.
CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]

ItemT = TypeVar("ItemT")


class StreamReader(Generic[ItemT]):
    """Reads a server stream into a queue in the background; `next()` waits with a deadline."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self.items: asyncio.Queue[ItemT] = asyncio.Queue()
        self.error: grpc.aio.AioRpcError | None = None
        self.ended = asyncio.Event()
        self._task = asyncio.create_task(self._read(), name="test-stream-reader")

    async def _read(self) -> None:
        try:
            async for item in self.call:
                self.items.put_nowait(item)
        except grpc.aio.AioRpcError as exc:
            self.error = exc
        except asyncio.CancelledError:
            pass
        finally:
            self.ended.set()

    async def next(self, *, timeout: float = DEFAULT_TIMEOUT) -> ItemT:
        try:
            async with asyncio.timeout(timeout):
                return await self.items.get()
        except TimeoutError:
            raise AssertionError(
                f"Nothing on the stream within {timeout} s (error: {self.error})"
            ) from None

    async def wait_ended(self, *, timeout: float = DEFAULT_TIMEOUT) -> grpc.aio.AioRpcError | None:
        async with asyncio.timeout(timeout):
            await self.ended.wait()
        return self.error

    async def cancel(self) -> None:
        self.call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            async with asyncio.timeout(3):
                await self._task


class GrpcAgent:
    """One agent process: its own channel, optionally naming its session in metadata."""

    def __init__(self, target: str, agent_id: str = "", *, session: str | None = None) -> None:
        self.agent_id = agent_id
        self.channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
        self.stub = reg_grpc.AgentRegistrationServiceStub(self.channel)
        self.metadata: tuple[tuple[str, str], ...] = (
            ((SESSION_KEY, session),) if session is not None else ()
        )
        self.commands: StreamReader[reg_pb.Command] | None = None
        self.messages: StreamReader[reg_pb.ChatMessage] | None = None
        self._responder: asyncio.Task[None] | None = None

    async def register(
        self, name: str = "", *, capabilities: dict[str, str] | None = None, **fields: Any
    ) -> reg_pb.AgentRegistrationResponse:
        response: reg_pb.AgentRegistrationResponse = await self.stub.RegisterAgent(
            reg_pb.AgentRegistrationRequest(
                agent_id=self.agent_id,
                agent_name=name or self.agent_id,
                capabilities=capabilities or {},
                **fields,
            ),
            metadata=self.metadata,
            timeout=DEFAULT_TIMEOUT,
        )
        self.agent_id = response.server_assigned_id
        return response

    async def heartbeat(
        self, status: str = "IDLE", metrics: dict[str, str] | None = None
    ) -> reg_pb.HeartbeatResponse:
        response: reg_pb.HeartbeatResponse = await self.stub.SendHeartbeat(
            reg_pb.HeartbeatRequest(agent_id=self.agent_id, status=status, metrics=metrics or {}),
            metadata=self.metadata,
            timeout=DEFAULT_TIMEOUT,
        )
        return response

    async def unregister(self) -> reg_pb.AgentUnregistrationResponse:
        response: reg_pb.AgentUnregistrationResponse = await self.stub.UnregisterAgent(
            reg_pb.AgentUnregistrationRequest(agent_id=self.agent_id),
            metadata=self.metadata,
            timeout=DEFAULT_TIMEOUT,
        )
        return response

    def open_commands(self) -> StreamReader[reg_pb.Command]:
        call = self.stub.ReceiveCommands(
            reg_pb.CommandStreamRequest(agent_id=self.agent_id), metadata=self.metadata
        )
        self.commands = StreamReader(call)
        return self.commands

    def answer_commands(
        self, answer: Callable[[reg_pb.Command], Awaitable[reg_pb.CommandResult | None]]
    ) -> None:
        """Opens the command stream and answers every command with `answer(command)`."""
        commands = self.open_commands()

        async def respond() -> None:
            while True:
                command = await commands.items.get()
                result = await answer(command)
                if result is not None:
                    await self.stub.SendCommandResult(
                        result, metadata=self.metadata, timeout=DEFAULT_TIMEOUT
                    )

        self._responder = asyncio.create_task(respond(), name="test-agent-responder")

    def open_messages(self, prefetch: int = 0) -> StreamReader[reg_pb.ChatMessage]:
        call = self.stub.ReceiveMessages(
            reg_pb.MessageStreamRequest(agent_id=self.agent_id, prefetch=prefetch),
            metadata=self.metadata,
        )
        self.messages = StreamReader(call)
        return self.messages

    async def ack(self, message_id: str, handled: bool = True) -> reg_pb.MessageAckResponse:
        response: reg_pb.MessageAckResponse = await self.stub.AckMessage(
            reg_pb.MessageAck(agent_id=self.agent_id, message_id=message_id, handled=handled),
            metadata=self.metadata,
            timeout=DEFAULT_TIMEOUT,
        )
        return response

    async def send_message(self, envelope_json: str) -> reg_pb.SendMessageResponse:
        response: reg_pb.SendMessageResponse = await self.stub.SendMessage(
            reg_pb.ChatMessage(agent_id=self.agent_id, envelope_json=envelope_json),
            metadata=self.metadata,
            timeout=DEFAULT_TIMEOUT,
        )
        return response

    async def close_streams(self) -> None:
        if self._responder is not None:
            self._responder.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                async with asyncio.timeout(3):
                    await self._responder
            self._responder = None
        for reader in (self.commands, self.messages):
            if reader is not None:
                await reader.cancel()
        self.commands = self.messages = None

    async def close(self) -> None:
        await self.close_streams()
        async with asyncio.timeout(3):
            await self.channel.close()

    async def __aenter__(self) -> GrpcAgent:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class GrpcBroker:
    """The gRPC side of a broker: registration and the agent status stream."""

    def __init__(self, target: str, broker_id: str = "broker_test") -> None:
        self.broker_id = broker_id
        self.channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
        self.registration = broker_grpc.BrokerRegistrationServiceStub(self.channel)
        self.status = status_grpc.AgentStatusServiceStub(self.channel)
        self.stream: StreamReader[status_pb.AgentStatusResponse] | None = None

    async def register(self, name: str = "test broker") -> broker_pb.BrokerRegistrationResponse:
        response: broker_pb.BrokerRegistrationResponse = await self.registration.RegisterBroker(
            broker_pb.BrokerRegistrationRequest(broker_id=self.broker_id, broker_name=name),
            timeout=DEFAULT_TIMEOUT,
        )
        return response

    def subscribe(self) -> StreamReader[status_pb.AgentStatusResponse]:
        call = self.status.SubscribeToAgentStatus(
            status_pb.AgentStatusRequest(broker_id=self.broker_id)
        )
        self.stream = StreamReader(call)
        return self.stream

    async def get_status(self) -> status_pb.AgentStatusResponse:
        response: status_pb.AgentStatusResponse = await self.status.GetAgentStatus(
            status_pb.AgentStatusRequest(broker_id=self.broker_id), timeout=DEFAULT_TIMEOUT
        )
        return response

    async def close(self) -> None:
        if self.stream is not None:
            await self.stream.cancel()
        async with asyncio.timeout(3):
            await self.channel.close()

    async def __aenter__(self) -> GrpcBroker:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
