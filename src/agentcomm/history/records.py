"""What the conversation store keeps and hands back, as plain values, and how it fails.

HistoryError
├── ConversationNotFound   no such conversation of that user (another user's too: 404)
├── Unrecoverable          the messages after that seq were removed by retention; reload whole
├── AmbiguousConversation  an admin named a conversation id several users have
└── StoreUnavailable       the database cannot be reached or failed; history is degraded
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from agentcomm.protocol.timestamps import from_epoch, to_iso


class HistoryError(Exception):
    """Something the store could not do; the subclass says what."""


class ConversationNotFound(HistoryError):
    """No conversation of that id belongs to that user."""


class Unrecoverable(HistoryError):
    """The messages asked for were removed (retention): the client must reload the whole
    conversation from its first kept message, `first_seq`."""

    def __init__(self, conversation_id: str, after: int, first_seq: int) -> None:
        super().__init__(
            f"The messages of conversation {conversation_id!r} after seq {after} were removed "
            f"by retention; they are unrecoverable. Reload it from seq {first_seq}."
        )
        self.first_seq = first_seq


class AmbiguousConversation(HistoryError):
    """An admin asked for a conversation id that several users have; name the user."""


class StoreUnavailable(HistoryError):
    """The database is down or refused the work; the text says what it answered."""


class MessageStatus(StrEnum):
    """Where a stored message stands: a TEXT is `accepted` until its final answer makes it
    `answered` or `failed`; answers are stored `final` (a REPLY) or `error` (an ERROR)."""

    ACCEPTED = "accepted"
    ANSWERED = "answered"
    FAILED = "failed"
    FINAL = "final"
    ERROR = "error"
    INTERRUPTED = "interrupted"


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message to store. A final answer (`answers` set) is stored in the conversation of the
    TEXT it answers, whatever conversation id it carries itself."""

    user_id: str
    conversation_id: str
    message_id: str
    message_type: str
    sender_id: str
    receiver_id: str
    text: str
    status: MessageStatus
    # Seconds since the epoch: when the hub accepted (a TEXT) or delivered (an answer) it.
    at: float
    error_code: str | None = None
    # A final answer: the message_id of the TEXT it answers.
    answers: str | None = None
    # Times the writer offered it again (an answer whose TEXT was not stored yet).
    retries: int = 0


@dataclass(frozen=True, slots=True)
class StoredMessage:
    conversation_id: str
    seq: int
    message_id: str
    message_type: str
    sender_id: str
    receiver_id: str
    text: str
    status: str
    error_code: str | None
    in_reply_to: str | None
    at: float

    def as_json(self) -> dict[str, Any]:
        """As the HTTP API and the HISTORY frame show it (docs/history.md)."""
        body: dict[str, Any] = {
            "seq": self.seq,
            "message_id": self.message_id,
            "message_type": self.message_type,
            "sender_id": self.sender_id,
            "receiver_id": self.receiver_id,
            "text_payload": self.text,
            "status": self.status,
            "timestamp": to_iso(from_epoch(self.at)),
        }
        if self.in_reply_to:
            body["in_reply_to_message_id"] = self.in_reply_to
        if self.error_code:
            body["error_code"] = self.error_code
        return body


@dataclass(frozen=True, slots=True)
class ConversationSummary:
    user_id: str
    conversation_id: str
    created_at: float
    updated_at: float
    # Seqs kept: first_seq..last_seq (first_seq > last_seq: none left).
    first_seq: int
    last_seq: int


@dataclass(frozen=True, slots=True)
class ConversationPage:
    conversations: list[ConversationSummary]
    # Pass as `before` for the next (older) page; None: this was the last.
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class MessagePage:
    conversation_id: str
    messages: list[StoredMessage]
    # The conversation's newest seq now; more to read while the last message's seq is below it.
    last_seq: int
    first_seq: int
