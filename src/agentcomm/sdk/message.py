"""What a handler receives, and the shapes of handlers the SDK accepts."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from agentcomm.protocol import Envelope
from agentcomm.protocol.calls import CallContext

if TYPE_CHECKING:
    from agentcomm.sdk.calls import Calls


@dataclass(frozen=True, slots=True)
class Message:
    """One chat message for the agent.

    `text` is what the sender wrote; `sender_id` is who will get the reply (a frontend or
    another agent); `envelope` is the whole wire message for anything else.
    """

    text: str
    message_id: str
    sender_id: str
    conversation_id: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    envelope: Envelope | None = None
    # The agent's calls, for `ask` and `ask_stream` (None: a Message made outside an agent).
    caller: Calls | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_envelope(cls, envelope: Envelope, calls: Calls | None = None) -> Message:
        return cls(
            text=envelope.text_payload or "",
            message_id=envelope.message_id,
            sender_id=envelope.sender_id or "",
            conversation_id=envelope.conversation_id,
            metadata=dict(envelope.metadata or {}),
            envelope=envelope,
            caller=calls,
        )

    @property
    def call(self) -> CallContext | None:
        """When another agent asked this: who (`asked_by`), while answering which message
        (`in_answer_to`), for which question at the root (`origin_message_id`,
        `origin_sender_id`, `conversation_id`), and the agents waiting (`chain`)."""
        return CallContext.from_metadata(self.metadata)

    async def ask(
        self,
        agent_id: str | None,
        text: str,
        *,
        capability: Mapping[str, str] | None = None,
        timeout: float | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        """Asks another agent while answering this message and returns its final answer
        (see `Agent.ask`); cancelling this message cancels the call."""
        return await self._calls().ask(
            agent_id,
            text,
            capability=capability,
            answering=self.envelope,
            timeout=timeout,
            metadata=metadata,
        )

    def ask_stream(
        self,
        agent_id: str | None,
        text: str,
        *,
        capability: Mapping[str, str] | None = None,
        timeout: float | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> AsyncIterator[str]:
        """As `ask`, yielding the answer's pieces as the agent streams them."""
        return self._calls().ask_stream(
            agent_id,
            text,
            capability=capability,
            answering=self.envelope,
            timeout=timeout,
            metadata=metadata,
        )

    def _calls(self) -> Calls:
        if self.caller is None:
            raise RuntimeError(
                "This Message was not given to a handler by an agent: it cannot ask."
            )
        return self.caller


class AgentStatus(StrEnum):
    """The status an agent reports in its heartbeats."""

    IDLE = "IDLE"
    BUSY = "BUSY"
    PAUSED = "PAUSED"


# A handler either returns the whole reply or yields it in pieces (streamed as REPLY_CHUNKs).
ReplyHandler = Callable[[Message], Awaitable[str]]
StreamHandler = Callable[[Message], AsyncIterator[str]]
MessageHandler = ReplyHandler | StreamHandler

# An operator command: (content, parameters) -> output shown to the operator.
CommandHandler = Callable[[str, dict[str, str]], Awaitable[str]]
