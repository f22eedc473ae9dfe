"""The call an agent's TEXT to another agent belongs to (an addition to PROTOCOL §2). No I/O.

An agent that asks another agent while it answers a message puts `metadata.call` on its TEXT:
who asks, the message it is answering, the message that started the whole tree (a frontend's
TEXT, usually) and its conversation, and the chain of agents waiting on this call. Every hop
passes metadata on untouched, so the asked agent, the broker and anything that logs or keeps
history see the whole tree of one user question. The rules about it (no asking oneself, no
cycles, no chain longer than MAX_HOPS) are in `rules.call_refusal`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agentcomm.protocol.ids import is_valid_id
from agentcomm.protocol.models import Envelope

CALL_KEY = "call"


@dataclass(frozen=True, slots=True)
class CallContext:
    """Where an agent's TEXT stands in the tree of calls of one question."""

    # The agent that sent this TEXT.
    asked_by: str
    # The message the asker was answering when it asked (None: it asked outside a handler).
    in_answer_to: str | None
    # The message that started the tree, its sender and its conversation.
    origin_message_id: str
    origin_sender_id: str
    conversation_id: str | None
    # The agents waiting on this call, from the first one asked down to the asker.
    chain: tuple[str, ...]

    @property
    def depth(self) -> int:
        """How many agents wait on this call: 1 for a call made by the agent a frontend asked."""
        return len(self.chain)

    def to_metadata(self) -> dict[str, Any]:
        return {
            "asked_by": self.asked_by,
            "in_answer_to": self.in_answer_to,
            "origin_message_id": self.origin_message_id,
            "origin_sender_id": self.origin_sender_id,
            "conversation_id": self.conversation_id,
            "chain": list(self.chain),
        }

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any] | None) -> CallContext | None:
        """The call a TEXT's metadata names; None when it names none, or not in this shape
        (metadata is the sender's own: a shape this hub did not write is no call)."""
        raw = (metadata or {}).get(CALL_KEY)
        if not isinstance(raw, Mapping):
            return None
        chain = raw.get("chain")
        asked_by = raw.get("asked_by")
        if not isinstance(asked_by, str) or not isinstance(chain, list):
            return None
        if not all(isinstance(link, str) and is_valid_id(link) for link in chain):
            return None

        def text(key: str) -> str | None:
            value = raw.get(key)
            return value if isinstance(value, str) and value else None

        return cls(
            asked_by=asked_by,
            in_answer_to=text("in_answer_to"),
            origin_message_id=text("origin_message_id") or "",
            origin_sender_id=text("origin_sender_id") or "",
            conversation_id=text("conversation_id"),
            chain=tuple(chain),
        )


def next_call(asker_id: str, answering: Envelope | None) -> CallContext:
    """The call `asker_id` makes while answering `answering` (None: outside any message)."""
    if answering is None:
        return CallContext(asker_id, None, "", asker_id, None, (asker_id,))
    parent = CallContext.from_metadata(answering.metadata)
    if parent is None:
        # Asked by a frontend (or anyone not in a call): the tree starts at that message.
        return CallContext(
            asked_by=asker_id,
            in_answer_to=answering.message_id,
            origin_message_id=answering.message_id,
            origin_sender_id=answering.sender_id or "",
            conversation_id=answering.conversation_id,
            chain=(asker_id,),
        )
    return CallContext(
        asked_by=asker_id,
        in_answer_to=answering.message_id,
        origin_message_id=parent.origin_message_id,
        origin_sender_id=parent.origin_sender_id,
        conversation_id=parent.conversation_id,
        chain=(*parent.chain, asker_id),
    )
