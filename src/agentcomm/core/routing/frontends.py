"""What reaches a frontend: replies in stream order, one final answer per TEXT, status echoes.

A message for a frontend whose socket another server process holds is forwarded to that
server's queue; the frontend id says which (its server tag).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from agentcomm.core.answers import AnswerLedger
from agentcomm.core.routing.effects import Plan, Publish, SendFrame
from agentcomm.core.sessions import FrontendSessions
from agentcomm.core.streams import ReplyStreams
from agentcomm.protocol.codec import encode_envelope, encode_for_client
from agentcomm.protocol.ids import frontend_server_tag
from agentcomm.protocol.models import Envelope
from agentcomm.protocol.queues import server_queue
from agentcomm.protocol.rules import (
    SERVER_SENDER,
    error_envelope,
    status_echo,
    wants_status_echo,
)
from agentcomm.protocol.timestamps import utc_now_iso
from agentcomm.protocol.vocabulary import ErrorCode, MessageType, RoutingStatus

log = logging.getLogger(__name__)

_FINAL_TYPES = (MessageType.REPLY, MessageType.ERROR)
_STREAMED_TYPES = (MessageType.REPLY, MessageType.REPLY_CHUNK)


class FrontendDelivery:
    """Frames for the frontends of one server process."""

    def __init__(
        self,
        *,
        server_tag: str,
        sessions: FrontendSessions,
        answers: AnswerLedger,
        streams: ReplyStreams,
        publish_timeout: float,
        peer_is_live: Callable[[str], bool] | None = None,
    ) -> None:
        self._server_tag = server_tag
        # Whether a peer hub with this tag is alive (no cluster: none is).
        self._peer_is_live = peer_is_live or (lambda tag: False)
        self._sessions = sessions
        self._answers = answers
        self._streams = streams
        self._publish_timeout = publish_timeout
        # Told of each final answer as it goes to its frontend (history).
        self.final_observers: list[Callable[[str, Envelope], None]] = []

    def deliver(self, frontend_id: str, message: Envelope) -> Plan[None]:
        """A chat message for a frontend: to its socket, in stream order, or on to the server
        that holds it."""
        session = self._sessions.get(frontend_id)
        if session is None:
            yield from self.forward_to_owner(frontend_id, message)
            return
        if self._answers.hold_if_refused(frontend_id, message):
            return  # the sender was told this message was not sent
        if message.message_type in _STREAMED_TYPES:
            for ready in self._streams.accept(frontend_id, message):
                yield from self._to_session(frontend_id, ready)
        else:
            yield from self._to_session(frontend_id, message)

    def route_known(self, agent_id: str, message: Envelope) -> str | None:
        """The frontend an agent's REPLY_CHUNK can go to straight, without a broker: one of
        this hub whose TEXT this hub handed to that very agent. The route of the answer was
        decided when the TEXT was routed; each chunk needs no decision of its own (the final
        answer still goes the whole way, persistent). None: the chunk goes the usual way."""
        if message.message_type is not MessageType.REPLY_CHUNK:
            return None
        receiver = message.receiver_id or ""
        answered = message.in_reply_to_message_id
        if not answered or self._sessions.get(receiver) is None:
            return None
        if self._answers.agent_for(receiver, answered) != agent_id:
            return None
        return receiver

    def release_overdue_streams(self) -> Plan[None]:
        """Finals held for chunks that never came go out now, with what did come."""
        for frontend_id, messages in self._streams.overdue():
            for message in messages:
                yield from self._to_session(frontend_id, message)

    def _to_session(self, frontend_id: str, message: Envelope) -> Plan[None]:
        session = self._sessions.get(frontend_id)
        if session is None:
            return
        answered = message.in_reply_to_message_id
        if answered and message.message_type not in _FINAL_TYPES:
            # A chunk or a notice about it: the answer is on its way (ANSWER_TIMEOUT).
            self._answers.heard_of(frontend_id, answered)
        if message.message_type is MessageType.REPLY_CHUNK:
            if not session.wants_stream or (
                answered and self._answers.is_answered(frontend_id, answered)
            ):
                return  # this frontend asked for whole replies only, or the answer is final
        elif (
            answered
            and message.message_type in _FINAL_TYPES
            and not self._answers.answer(frontend_id, answered)
        ):
            log.info("Dropping a second final answer to %s", answered)
            return
        if message.message_type is MessageType.ERROR and not message.send_timestamp:
            # Every ERROR a frontend gets says when (a broker's may not).
            frame = encode_envelope(message, for_client=True, send_timestamp=utc_now_iso())
        else:
            frame = encode_envelope(message, for_client=True)
        if answered and message.message_type in _FINAL_TYPES:
            session.keep_final(answered, frame)
            for observer in self.final_observers:
                observer(frontend_id, message)
        yield SendFrame(frontend_id, frame)
        for sibling in self._sessions.siblings(frontend_id):
            other = self._sessions.get(sibling)
            if other is not None and (
                message.message_type is not MessageType.REPLY_CHUNK or other.wants_stream
            ):
                yield SendFrame(sibling, frame)

    def answer_again(self, frontend_id: str, message: Envelope) -> Plan[None]:
        """A TEXT re-using the id of one already answered: its answer again when that went out
        on an earlier connection (it may have been lost with it); a `delivered` echo when it
        went (or is going) out on this one, where the frontend has it or gets it in order, and
        a second final answer would be one too many; ERROR duplicate_message_id when the
        answer is no longer kept."""
        session = self._sessions.get(frontend_id)
        kept = session.finals.get(message.message_id) if session is not None else None
        if kept is None:
            error = error_envelope(
                sender_id=SERVER_SENDER,
                receiver_id=frontend_id,
                code=ErrorCode.DUPLICATE_MESSAGE_ID,
                text=f"Message {message.message_id} was answered already; use a new "
                "message_id for a new message.",
                in_reply_to=message.message_id,
                conversation_id=message.conversation_id,
            )
            yield SendFrame(frontend_id, encode_for_client(error))
            return
        assert session is not None
        frame, link = kept
        if link is not None and link is not session.link:
            yield SendFrame(frontend_id, frame)
            return
        yield SendFrame(frontend_id, status_echo(message, RoutingStatus.DELIVERED))

    def kept_final(self, frontend_id: str, message_id: str) -> bytes | None:
        """The final answer to `message_id` when it went out on a connection that broke since."""
        session = self._sessions.get(frontend_id)
        if session is None:
            return None
        return session.final_lost_with_a_connection(message_id)

    def held_elsewhere(self, frontend_id: str) -> bool:
        """Another hub of the cluster holds this frontend: its socket, its session and what it
        is owed (echoes, the one final answer per TEXT) are that hub's."""
        if self._sessions.get(frontend_id) is not None:
            return False
        owner = frontend_server_tag(frontend_id)
        # A tag no live hub carries is a hub gone: what concerns its frontends is decided here.
        return bool(owner) and owner != self._server_tag and self._peer_is_live(owner)

    def forward_to_owner(self, frontend_id: str, message: Envelope) -> Plan[None]:
        """`message`, unchanged, to the server that holds `frontend_id` (or dropped, when that
        is this one and the frontend is gone)."""
        owner = frontend_server_tag(frontend_id)
        if owner and owner != self._server_tag:
            # Another server process holds this frontend's socket.
            yield Publish(
                server_queue(owner),
                encode_envelope(message, for_client=False),
                message.message_id,
                mandatory=False,
                timeout=self._publish_timeout,
            )
            return
        log.info(
            "Dropping %s %s for %s: the frontend is gone",
            message.message_type.value,
            message.message_id,
            frontend_id,
        )

    # -- status echoes -----------------------------------------------------------------------

    def echo(
        self,
        frontend_id: str,
        message: Envelope,
        status: RoutingStatus,
        code: ErrorCode | str | None = None,
        reason: str | None = None,
    ) -> Plan[None]:
        """Tells the sender of `message` where it stands (on `error`, `reason` says why)."""
        if self._answers.is_refused(frontend_id, message.message_id):
            return  # told it was not sent; a late copy on the bus says nothing new
        frame = status_echo(message, status, code, reason)
        for target in (frontend_id, *self._sessions.siblings(frontend_id)):
            session = self._sessions.get(target)
            if (
                status is RoutingStatus.DELIVERED
                and session is not None
                and not wants_status_echo(session.capabilities, status)
            ):
                continue  # a client that cannot take this status asked not to get it
            yield SendFrame(target, frame)

    def refuse(self, frontend_id: str, message: Envelope, code: ErrorCode, text: str) -> Plan[None]:
        """`message` was not sent: its echo says so (for a TEXT) and an ERROR says why."""
        if message.message_type is MessageType.TEXT:
            yield from self.echo(frontend_id, message, RoutingStatus.ERROR, code, text)
        error = error_envelope(
            sender_id=SERVER_SENDER,
            receiver_id=frontend_id,
            code=code,
            text=text,
            in_reply_to=message.message_id,
            conversation_id=message.conversation_id,
        )
        yield SendFrame(frontend_id, encode_for_client(error))
