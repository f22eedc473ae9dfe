"""What a handler receives, and the shapes of handlers the SDK accepts."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from agentcomm.protocol import Envelope


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

    @classmethod
    def from_envelope(cls, envelope: Envelope) -> Message:
        return cls(
            text=envelope.text_payload or "",
            message_id=envelope.message_id,
            sender_id=envelope.sender_id or "",
            conversation_id=envelope.conversation_id,
            metadata=dict(envelope.metadata or {}),
            envelope=envelope,
        )


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
