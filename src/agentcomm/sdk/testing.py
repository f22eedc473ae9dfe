"""An in-memory stand-in for the server's agent service, to test agents without a server.

    hub = InMemoryHub()
    agent = Agent("echo", hub=hub, transport="grpc", settings=...)
    ...
    await hub.deliver(Envelope(message_type=MessageType.TEXT, text_payload="hi", sender_id="u"))
    reply = await hub.next_sent()

Everything the agent calls is recorded in queues that a test awaits (with a timeout); the
test plays the server by feeding commands and messages and by breaking the link.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from agentcomm.protocol import Envelope, encode_for_bus
from agentcomm.sdk.commands import Command, CommandOutcome
from agentcomm.sdk.errors import AgentError, HubUnavailable, NotRegistered
from agentcomm.sdk.hub_client import IncomingMessage, Registration, RegistrationRequest

T = TypeVar("T")

DEFAULT_WAIT = 5.0


@dataclass(frozen=True, slots=True)
class Heartbeat:
    agent_id: str
    status: str
    metrics: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Ack:
    message_id: str
    handled: bool


@dataclass
class _Link:
    """One connection's streams; replaced when the link is broken."""

    commands: asyncio.Queue[Command | AgentError] = field(default_factory=asyncio.Queue)
    messages: asyncio.Queue[IncomingMessage | AgentError] = field(default_factory=asyncio.Queue)


class InMemoryHub:
    """A HubClient that records every call; see the module docs."""

    def __init__(self, *, assign_id: str | None = None, heartbeat_interval: int = 1) -> None:
        self.assign_id = assign_id
        self.heartbeat_interval = heartbeat_interval
        self.registrations: asyncio.Queue[RegistrationRequest] = asyncio.Queue()
        self.heartbeats: asyncio.Queue[Heartbeat] = asyncio.Queue()
        self.results: asyncio.Queue[tuple[str, CommandOutcome]] = asyncio.Queue()
        self.acks: asyncio.Queue[Ack] = asyncio.Queue()
        self.sent: asyncio.Queue[Envelope] = asyncio.Queue()
        self.unregistered: asyncio.Queue[str] = asyncio.Queue()
        self.message_streams_opened: asyncio.Queue[str] = asyncio.Queue()
        self.command_streams_opened: asyncio.Queue[str] = asyncio.Queue()
        # Raised by the next register() calls, in order (e.g. RegistrationRefused).
        self.register_errors: list[AgentError] = []
        # While set, every unary call raises it (the server is down).
        self.failure: AgentError | None = None
        self.closed = False
        self._known: set[str] = set()
        self._link = _Link()

    # -- the test's side -------------------------------------------------------------------

    async def deliver(self, envelope: Envelope) -> None:
        """A message for the agent on its ReceiveMessages stream."""
        item = IncomingMessage(envelope.message_id, encode_for_bus(envelope).decode())
        await self._link.messages.put(item)

    async def send_command(self, command: Command) -> None:
        await self._link.commands.put(command)

    def go_down(self) -> None:
        """The server goes away: open streams break and calls fail until `come_back()`."""
        self.failure = HubUnavailable("The in-memory hub is down.")
        self._break(self.failure)

    def come_back(self, *, forget_agents: bool = False) -> None:
        """The server is reachable again; `forget_agents` as after a restart."""
        self.failure = None
        if forget_agents:
            self._known.clear()

    def forget_agents(self) -> None:
        """The server lost its registry (a restart) while the agent's link looked fine."""
        self._known.clear()
        self._break(NotRegistered("The in-memory hub forgot the agent."))

    async def next_sent(self, timeout: float = DEFAULT_WAIT) -> Envelope:
        return await _next(self.sent, timeout)

    async def next_ack(self, timeout: float = DEFAULT_WAIT) -> Ack:
        return await _next(self.acks, timeout)

    async def next_result(self, timeout: float = DEFAULT_WAIT) -> tuple[str, CommandOutcome]:
        return await _next(self.results, timeout)

    async def next_registration(self, timeout: float = DEFAULT_WAIT) -> RegistrationRequest:
        return await _next(self.registrations, timeout)

    async def heartbeat_with(self, status: str, timeout: float = DEFAULT_WAIT) -> Heartbeat:
        """The next heartbeat that reports `status` (earlier ones are skipped)."""
        async with asyncio.timeout(timeout):
            while True:
                beat = await self.heartbeats.get()
                if beat.status == status:
                    return beat

    # -- HubClient -------------------------------------------------------------------------

    async def register(self, request: RegistrationRequest) -> Registration:
        self._check_up()
        if self.register_errors:
            raise self.register_errors.pop(0)
        agent_id = request.agent_id or self.assign_id or "agent_test"
        self._known.add(agent_id)
        await self.registrations.put(request)
        return Registration(agent_id, self.heartbeat_interval, "server_test")

    async def unregister(self, agent_id: str) -> None:
        self._check_known(agent_id)
        self._known.discard(agent_id)
        await self.unregistered.put(agent_id)

    async def heartbeat(self, agent_id: str, status: str, metrics: Mapping[str, str]) -> int | None:
        self._check_known(agent_id)
        await self.heartbeats.put(Heartbeat(agent_id, status, dict(metrics)))
        return self.heartbeat_interval

    async def commands(self, agent_id: str) -> AsyncGenerator[Command, None]:
        self._check_known(agent_id)
        queue = self._link.commands
        await self.command_streams_opened.put(agent_id)
        while True:
            item = await queue.get()
            if isinstance(item, AgentError):
                raise item
            yield item

    async def send_command_result(
        self, agent_id: str, command_id: str, outcome: CommandOutcome
    ) -> None:
        self._check_known(agent_id)
        await self.results.put((command_id, outcome))

    async def messages(self, agent_id: str, prefetch: int) -> AsyncGenerator[IncomingMessage, None]:
        self._check_known(agent_id)
        queue = self._link.messages
        await self.message_streams_opened.put(agent_id)
        while True:
            item = await queue.get()
            if isinstance(item, AgentError):
                raise item
            yield item

    async def ack(self, agent_id: str, message_id: str, handled: bool) -> None:
        self._check_known(agent_id)
        await self.acks.put(Ack(message_id, handled))

    async def send_message(
        self, agent_id: str, envelope: Envelope, *, ack: str = "", traceparent: str = ""
    ) -> bool:
        self._check_known(agent_id)
        await self.sent.put(envelope)
        if ack:
            await self.acks.put(Ack(ack, True))
        return bool(ack)

    async def close(self) -> None:
        self.closed = True

    # -- internals -------------------------------------------------------------------------

    def _check_up(self) -> None:
        if self.failure is not None:
            raise self.failure

    def _check_known(self, agent_id: str) -> None:
        self._check_up()
        if agent_id not in self._known:
            raise NotRegistered(f"The in-memory hub does not know {agent_id}.")

    def _break(self, error: AgentError) -> None:
        link, self._link = self._link, _Link()
        link.commands.put_nowait(error)
        link.messages.put_nowait(error)


async def _next(queue: asyncio.Queue[T], timeout: float) -> T:
    async with asyncio.timeout(timeout):
        return await queue.get()
