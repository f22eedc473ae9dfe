"""Answers a broker sent back to the server instead of on to the frontend that asked.

The described system's broker passes a message on only when its receiver is a known agent: an
agent's answer addressed to a frontend comes back on `server_input_queue` as an ERROR to
"Server" that keeps the answer's message_id, its sender and its text, and nothing of whom it
answers. Other brokers may address an answer to no one, back to its own sender, or to an id
that is no agent. Such an answer from an agent still reaches the frontend that asked, once,
when the server can tell which TEXT it answers (`AnswerLedger`): by the TEXT's id where the
answer kept `in_reply_to_message_id`, else by the answer's own id — one that passed through
this server, or one that names the TEXT (`protocol.ids.answer_message_id`, as SDK agents make
them). What it becomes for the frontend is `protocol.rules.restore_bounced_answer`.

What cannot be matched is logged with its ids, counted, and handled as before (an error goes
back to its sender); its TEXT is then answered by ANSWER_TIMEOUT at the latest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, StrEnum

from agentcomm.core.answers import AnswerLedger
from agentcomm.core.presence_views import AgentLookup, Reach
from agentcomm.core.routing.effects import Plan
from agentcomm.core.routing.frontends import FrontendDelivery
from agentcomm.core.sessions import FrontendSessions
from agentcomm.protocol.ids import frontend_server_tag, is_frontend_id, parse_answer_id
from agentcomm.protocol.models import Envelope
from agentcomm.protocol.rules import (
    names_no_receiver,
    receiver_of,
    restore_bounced_answer,
    sender_of,
)
from agentcomm.protocol.vocabulary import MessageType

log = logging.getLogger(__name__)

_ANSWER_TYPES = frozenset({MessageType.REPLY, MessageType.REPLY_CHUNK, MessageType.ERROR})


class AnswerEvent(StrEnum):
    """What became of an answer the routing had to look after (for metrics)."""

    BOUNCE_DELIVERED = "bounce_delivered"  # a bounced answer reached the frontend that asked
    BOUNCE_UNMATCHED = "bounce_unmatched"  # a bounced answer no waiting TEXT could be found for
    ANSWER_TIMEOUT = "answer_timeout"  # a TEXT got no answer in time: ERROR answer_timeout


AnswerEventObserver = Callable[[AnswerEvent], None]


class _Placed(Enum):
    NOWHERE = "nowhere"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class _Match:
    frontend_id: str
    text_id: str
    known_type: MessageType | None = None
    known_code: str | None = None


@dataclass(frozen=True, slots=True)
class _Elsewhere:
    """The answer names a frontend of another server: that server's ledger knows the TEXT."""

    frontend_id: str


class BouncedAnswers:
    def __init__(
        self,
        *,
        server_tag: str,
        registry: AgentLookup,
        sessions: FrontendSessions,
        answers: AnswerLedger,
        frontends: FrontendDelivery,
        on_event: AnswerEventObserver,
    ) -> None:
        self._server_tag = server_tag
        self._registry = registry
        self._sessions = sessions
        self._answers = answers
        self._frontends = frontends
        self._on_event = on_event
        self._warned = False

    def passing(self, message: Envelope) -> None:
        """An agent's message on its way out through this server: an answer to a frontend is
        remembered by its id, should a broker send it back bare."""
        receiver = receiver_of(message)
        if (
            receiver is not None
            and is_frontend_id(receiver)
            and message.message_type in _ANSWER_TYPES
            and message.in_reply_to_message_id
        ):
            self._answers.answer_passed(receiver, message)

    def take(self, message: Envelope) -> Plan[bool]:
        """True when `message` (broker output) was an agent's answer sent back instead of on,
        and it was handled here: delivered to the frontend that asked, handed to the server
        that holds that frontend, or dropped as a chunk whose text did not survive."""
        placed = self._out_of_place(message)
        if placed is None:
            return False
        match = self._match(message)
        if match is None:
            if placed is _Placed.NOWHERE:
                # Addressed to an unknown id instead, it is refused to its sender as always.
                log.warning(
                    "%s %s from %s came back addressed to %r (in reply to %s; %s) and no TEXT "
                    "waiting here matches it: it goes back to its sender",
                    message.message_type.value,
                    message.message_id,
                    sender_of(message),
                    message.receiver_id,
                    message.in_reply_to_message_id,
                    message.routing_status_message or "no reason given",
                )
                self._on_event(AnswerEvent.BOUNCE_UNMATCHED)
            return False
        if isinstance(match, _Elsewhere):
            yield from self._frontends.forward_to_owner(match.frontend_id, message)
            return True
        restored = restore_bounced_answer(
            message,
            frontend_id=match.frontend_id,
            in_reply_to=match.text_id,
            known_type=match.known_type,
            known_code=match.known_code,
        )
        if restored is None:
            # A chunk whose text was lost on the way; the final answer brings the whole text.
            self._answers.heard_of(match.frontend_id, match.text_id)
            return True
        self._warn_once(message)
        log.debug(
            "Answer %s to %s came back from the broker; delivered to %s as %s",
            message.message_id,
            match.text_id,
            match.frontend_id,
            restored.message_type.value,
        )
        self._on_event(AnswerEvent.BOUNCE_DELIVERED)
        yield from self._frontends.deliver(match.frontend_id, restored)
        return True

    def _out_of_place(self, message: Envelope) -> _Placed | None:
        """Where an agent's answer is addressed when that is not where an answer goes: to no
        one (or "Server") or back to its own sender (NOWHERE), or to an id that is neither a
        frontend nor a known agent (UNKNOWN); None for anything else."""
        if message.message_type not in _ANSWER_TYPES:
            return None
        sender = sender_of(message)
        if sender is None or is_frontend_id(sender) or names_no_receiver(sender):
            return None
        if (
            self._registry.reach(sender) is Reach.UNKNOWN
            and parse_answer_id(message.message_id) is None
        ):
            return None  # not from an agent: a broker's own error, say
        receiver = receiver_of(message)
        if receiver is None or receiver == sender:
            return _Placed.NOWHERE
        if is_frontend_id(receiver) or self._registry.reach(receiver) is not Reach.UNKNOWN:
            return None
        return _Placed.UNKNOWN

    def _match(self, message: Envelope) -> _Match | _Elsewhere | None:
        answers = self._answers
        text_id = message.in_reply_to_message_id
        if text_id:
            client = (
                message.client_id
                if message.client_id and is_frontend_id(message.client_id)
                else None
            )
            if client is not None and self._held_elsewhere(client):
                return _Elsewhere(client)
            asker = answers.asker_of(text_id, agent_id=sender_of(message), frontend_id=client)
            if asker is not None:
                return _Match(asker, text_id)
        passed = answers.passed_answer(message.message_id)
        if passed is not None:
            return _Match(
                passed.frontend_id, passed.message_id, passed.message_type, passed.error_code
            )
        named = parse_answer_id(message.message_id)
        if named is None:
            return None
        if self._held_elsewhere(named.frontend_id):
            return _Elsewhere(named.frontend_id)
        text_id = answers.text_by_ref(named.frontend_id, named.text_ref)
        if text_id is None:
            return None
        known = MessageType.ERROR if named.is_error else MessageType.REPLY
        return _Match(named.frontend_id, text_id, known, named.error_code)

    def _held_elsewhere(self, frontend_id: str) -> bool:
        return (
            self._sessions.get(frontend_id) is None
            and frontend_server_tag(frontend_id) != self._server_tag
        )

    def _warn_once(self, message: Envelope) -> None:
        if self._warned:
            return
        self._warned = True
        log.warning(
            "A broker sends agents' answers back to the server instead of passing them on "
            "(first: %s from %s, %s); the server delivers them to the frontends that asked. "
            "Brokers should route a message whose receiver_id is a frontend to that frontend.",
            message.message_id,
            sender_of(message),
            message.routing_status_message or "no reason given",
        )
