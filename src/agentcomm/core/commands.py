"""Operator commands for agents: queued to the agent's command stream, answered by results.

HTTP `POST /api/agents/{id}/commands` waits here for the `CommandResult` the agent sends back
through `SendCommandResult`.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass, field

from agentcomm.core.errors import AgentOffline, CommandTimedOut
from agentcomm.core.presence import AgentRegistry

# Commands waiting for a stream that is slow to read; more than this means the agent is stuck.
COMMAND_QUEUE_SIZE = 256


@dataclass(frozen=True)
class Command:
    command_id: str
    type: str
    content: str = ""
    parameters: dict[str, str] = field(default_factory=dict)
    is_cancellation: bool = False


@dataclass(frozen=True)
class CommandOutcome:
    command_id: str
    agent_id: str
    success: bool
    output: str = ""
    error_message: str = ""
    exit_code: int = 0
    execution_time_ms: int = 0


class CommandStream:
    """One open ReceiveCommands stream of an agent."""

    def __init__(self, agent_id: str) -> None:
        self.agent_id = agent_id
        self.queue: asyncio.Queue[Command] = asyncio.Queue(COMMAND_QUEUE_SIZE)


class CommandCenter:
    def __init__(self, registry: AgentRegistry) -> None:
        self._registry = registry
        self._streams: dict[str, list[CommandStream]] = {}
        self._waiting: dict[str, tuple[str, asyncio.Future[CommandOutcome]]] = {}

    def open_stream(self, agent_id: str) -> CommandStream:
        stream = CommandStream(agent_id)
        self._streams.setdefault(agent_id, []).append(stream)
        return stream

    def close_stream(self, stream: CommandStream) -> None:
        streams = self._streams.get(stream.agent_id, [])
        if stream in streams:
            streams.remove(stream)
        if not streams:
            self._streams.pop(stream.agent_id, None)

    def has_stream(self, agent_id: str) -> bool:
        return bool(self._streams.get(agent_id))

    async def execute(
        self,
        agent_id: str,
        command_type: str,
        content: str = "",
        parameters: dict[str, str] | None = None,
        *,
        timeout: float,
    ) -> CommandOutcome:
        """Sends a command to the agent's newest stream and waits for its result."""
        record = self._registry.require(agent_id)
        streams = self._streams.get(agent_id)
        if not record.online:
            raise AgentOffline(agent_id)
        if not streams:
            raise AgentOffline(agent_id, "has no open command stream")
        command = Command(
            command_id=uuid.uuid4().hex,
            type=command_type,
            content=content,
            parameters=dict(parameters or {}),
        )
        future: asyncio.Future[CommandOutcome] = asyncio.get_running_loop().create_future()
        self._waiting[command.command_id] = (agent_id, future)
        try:
            try:
                streams[-1].queue.put_nowait(command)
            except asyncio.QueueFull:
                raise AgentOffline(agent_id, "is not reading its commands") from None
            try:
                async with asyncio.timeout(timeout):
                    return await future
            except TimeoutError:
                raise CommandTimedOut(agent_id, command.command_id, timeout) from None
        finally:
            self._waiting.pop(command.command_id, None)

    def complete(self, outcome: CommandOutcome) -> bool:
        """A result arrived; False when nobody waits for that command (late or unknown)."""
        waiting = self._waiting.get(outcome.command_id)
        if waiting is None or waiting[0] != outcome.agent_id:
            return False
        future = waiting[1]
        if not future.done():
            future.set_result(outcome)
        return True

    def cancel_all(self) -> None:
        """Shutdown: nobody waits forever."""
        for _agent_id, future in self._waiting.values():
            with contextlib.suppress(asyncio.InvalidStateError):
                future.cancel()
