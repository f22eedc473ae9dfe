"""The server's routing decisions (PROTOCOL §4), written once for every transport.

Inputs: a frontend's frame (WebSocket), an agent's message (gRPC SendMessage), and the broker's
output on `server_input_queue`. Outputs: publishes on the bus, frames to frontend sessions, and
status echoes of a sender's own message (`pending` → `routed` → `delivered`, or `error`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from agentcomm.bus.base import Bus, BusError, BusUnavailable, Unroutable
from agentcomm.core.answers import AnswerLedger
from agentcomm.core.clock import Clock, SystemClock
from agentcomm.core.presence import AgentRegistry
from agentcomm.core.sessions import FrontendSessions
from agentcomm.core.streams import ReplyStreams
from agentcomm.protocol.codec import encode_envelope, encode_for_client
from agentcomm.protocol.errors import ProtocolError
from agentcomm.protocol.ids import frontend_server_tag, is_frontend_id, server_tag
from agentcomm.protocol.models import Envelope
from agentcomm.protocol.queues import BROKER_INPUT_QUEUE, agent_queue, server_queue
from agentcomm.protocol.timestamps import utc_now_iso
from agentcomm.protocol.vocabulary import (
    AGENT_SENDABLE,
    SERVER_RECEIVER,
    ErrorCode,
    MessageType,
    RoutingStatus,
)

log = logging.getLogger(__name__)

# How long a "routed" echo may wait for the "pending" echo of the same message, so that a
# sender never sees them out of order even when the broker is faster than the publish confirm.
_PENDING_ECHO_WAIT_SECONDS = 5.0

RouteObserver = Callable[[Envelope], None]


class ServerRouter:
    """Where each message goes, and what its sender is told about it."""

    def __init__(
        self,
        *,
        server_id: str,
        bus: Bus,
        registry: AgentRegistry,
        sessions: FrontendSessions,
        answers: AnswerLedger,
        streams: ReplyStreams,
        publish_timeout: float = 5.0,
        clock: Clock | None = None,
        expect_agents_for: float = 0.0,
    ) -> None:
        """`expect_agents_for`: seconds after this router is made during which an agent it does
        not know yet, but whose queue exists, counts as one coming back (see _to_agent)."""
        self._server_id = server_id
        self._server_tag = server_tag(server_id)
        self._bus = bus
        self._registry = registry
        self._sessions = sessions
        self._answers = answers
        self._streams = streams
        self._publish_timeout = publish_timeout
        self._clock = clock or SystemClock()
        self._expect_agents_until = self._clock.monotonic() + expect_agents_for
        # message_id of a frontend's message on its way to the bus -> who waits for its
        # "pending" echo (a broker answer that overtook the publish confirm). The entry goes as
        # soon as the echo went out: a message not found here needs no waiting.
        self._unechoed: dict[str, list[asyncio.Future[None]]] = {}
        self._observers: list[RouteObserver] = []

    def observe(self, observer: RouteObserver) -> None:
        """Calls `observer` with every message the router handles (metrics, tests)."""
        self._observers.append(observer)

    # -- from frontends ----------------------------------------------------------------------

    async def accept_from_frontend(
        self, frontend_id: str, message: Envelope, *, received_at: float | None = None
    ) -> None:
        """A TEXT or CANCEL from a registered frontend. Raises ProtocolError on bad input.

        `received_at` (event loop time) is when the frame arrived: the sender is answered
        within the publish timeout of that moment, also when frames queued up behind others
        while the bus was slow or down.
        """
        if message.message_type is MessageType.TEXT:
            if not (message.text_payload or "").strip():
                raise ProtocolError(
                    ErrorCode.INVALID_MESSAGE,
                    "A TEXT needs a non-empty text_payload.",
                    message.message_id,
                )
        elif message.message_type is MessageType.CANCEL:
            if not message.in_reply_to_message_id:
                raise ProtocolError(
                    ErrorCode.INVALID_MESSAGE,
                    "A CANCEL needs in_reply_to_message_id: the TEXT to stop.",
                    message.message_id,
                )
        else:
            raise ProtocolError(
                ErrorCode.UNSUPPORTED_TYPE,
                f"Frontends cannot send {message.message_type.value}.",
                message.message_id,
            )
        receiver = (message.receiver_id or "").strip()
        if receiver.lower() == SERVER_RECEIVER:
            receiver = ""
        if not receiver and message.message_type is MessageType.CANCEL:
            # Name the agent working on it, so that any broker can route the CANCEL.
            receiver = (
                self._answers.agent_for(frontend_id, message.in_reply_to_message_id or "") or ""
            )
        if receiver and is_frontend_id(receiver):
            raise ProtocolError(
                ErrorCode.UNKNOWN_RECEIVER,
                "Frontends talk to agents; receiver_id must be an agent id or empty.",
                message.message_id,
            )
        outgoing = message.model_copy(
            update={
                "sender_id": frontend_id,
                "receiver_id": receiver or None,
                "client_id": frontend_id,
                "server_id": self._server_id,
                "routing_status": RoutingStatus.PENDING,
                "send_timestamp": message.send_timestamp or utc_now_iso(),
                "hops": 0,
                "error_code": None,
            }
        )
        is_text = outgoing.message_type is MessageType.TEXT
        if is_text and not self._answers.first_time_accepted(frontend_id, outgoing.message_id):
            # A re-sent copy (the frontend lost its connection before our echo): it is on the
            # bus already, so only say so again.
            if not self._answers.is_answered(frontend_id, outgoing.message_id):
                self._echo(frontend_id, outgoing, RoutingStatus.PENDING)
            elif (final := self._kept_final(frontend_id, outgoing.message_id)) is not None:
                # Answered, but the answer went out on a connection that broke under it.
                self._sessions.send(frontend_id, final)
            return
        if is_text:
            kept = self._answers.resent_after_refusal(frontend_id, outgoing.message_id)
            if kept is not None:
                # The refused copy reached the bus after all, and its answer came meanwhile.
                self._echo(frontend_id, outgoing, RoutingStatus.PENDING)
                await self._to_frontend(frontend_id, kept)
                return
        # Made per message, but waited on only when the broker is faster than the confirm.
        waiters: list[asyncio.Future[None]] = []
        self._unechoed[outgoing.message_id] = waiters
        timeout = self._publish_timeout
        if received_at is not None:
            timeout += received_at - asyncio.get_running_loop().time()
        try:
            if timeout <= 0:
                raise BusUnavailable(
                    "Earlier messages used up this one's time waiting for the bus."
                )
            await self._bus.publish(
                BROKER_INPUT_QUEUE,
                encode_envelope(outgoing, for_client=False),
                message_id=outgoing.message_id,
                timeout=timeout,
            )
        except asyncio.CancelledError:
            self._echo_done(outgoing.message_id, waiters)
            raise
        except BusError as exc:
            self._echo_done(outgoing.message_id, waiters)
            log.warning("Could not hand %s to the broker: %s", outgoing.message_id, exc)
            self._fail_to_frontend(
                frontend_id,
                outgoing,
                ErrorCode.BUS_UNAVAILABLE,
                "The message bus is unavailable; the message was not sent. Try again shortly.",
            )
            if is_text:
                self._answers.refused(frontend_id, outgoing.message_id)
            return
        if is_text:
            self._echo(frontend_id, outgoing, RoutingStatus.PENDING)
        self._echo_done(outgoing.message_id, waiters)
        self._notify(outgoing)

    def _echo_done(self, message_id: str, waiters: list[asyncio.Future[None]]) -> None:
        """The "pending" echo of `message_id` went out (or never will): whoever waits for it
        goes on."""
        if self._unechoed.get(message_id) is waiters:
            del self._unechoed[message_id]
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # -- from agents over gRPC ---------------------------------------------------------------

    async def accept_from_agent(self, agent_id: str, message: Envelope) -> Envelope:
        """An agent's REPLY / REPLY_CHUNK / SYSTEM / ERROR, published towards the broker."""
        if message.message_type not in AGENT_SENDABLE:
            raise ProtocolError(
                ErrorCode.UNSUPPORTED_TYPE,
                f"Agents cannot send {message.message_type.value}; "
                "they send REPLY, REPLY_CHUNK, SYSTEM or ERROR.",
                message.message_id,
            )
        outgoing = message.model_copy(
            update={
                "sender_id": agent_id,
                "routing_status": RoutingStatus.PENDING,
                "send_timestamp": message.send_timestamp or utc_now_iso(),
            }
        )
        await self._bus.publish(
            BROKER_INPUT_QUEUE,
            encode_envelope(outgoing, for_client=False),
            message_id=outgoing.message_id,
            timeout=self._publish_timeout,
        )
        self._notify(outgoing)
        return outgoing

    # -- from the broker ---------------------------------------------------------------------

    async def handle_broker_output(self, message: Envelope) -> None:
        """A message from `server_input_queue`: deliver it, or tell its sender why not.

        Raises BusUnavailable when a publish it needs fails, so that the bus message is not
        acked and comes back once the bus is healthy again.
        """
        self._notify(message)
        if message.routing_status is RoutingStatus.ERROR or (
            message.message_type is MessageType.ERROR and message.routing_status is None
        ):
            await self._deliver_error(message)
            return
        receiver = (message.receiver_id or "").strip()
        if not receiver or receiver.lower() == SERVER_RECEIVER:
            await self._reject(
                message, ErrorCode.UNKNOWN_RECEIVER, "The broker routed the message to no one."
            )
            return
        if is_frontend_id(receiver):
            await self._to_frontend(receiver, message)
            return
        await self._to_agent(receiver, message)

    async def _to_agent(self, agent_id: str, message: Envelope) -> None:
        record = self._registry.get(agent_id)
        # A server that has just started knows no agent yet: those of the server before it (a
        # restart) are on their way back. Their messages wait in their queues, and their
        # senders get ERROR agent_offline if they are not back within DELIVERY_TIMEOUT.
        expected = record is None and self._clock.monotonic() < self._expect_agents_until
        if record is None and not expected:
            await self._reject(
                message, ErrorCode.UNKNOWN_RECEIVER, f"No agent is registered as {agent_id!r}."
            )
            return
        if record is not None and not record.online:
            await self._reject(message, ErrorCode.AGENT_OFFLINE, f"Agent {agent_id!r} is offline.")
            return
        sender = message.sender_id or message.client_id or ""
        from_frontend = is_frontend_id(sender) and message.message_type is MessageType.TEXT
        if from_frontend:
            await self._wait_for_pending_echo(message.message_id)
            if not expected:
                self._echo(sender, message, RoutingStatus.ROUTED)
        try:
            await self._bus.publish(
                agent_queue(agent_id),
                # Internal fields stay on the server's side (PROTOCOL §0).
                encode_envelope(message, for_client=True, routing_status=RoutingStatus.DELIVERED),
                message_id=message.message_id,
                timeout=self._publish_timeout,
            )
        except Unroutable:
            if expected:
                await self._reject(
                    message, ErrorCode.UNKNOWN_RECEIVER, f"No agent is registered as {agent_id!r}."
                )
                return
            await self._reject(
                message, ErrorCode.AGENT_OFFLINE, f"Agent {agent_id!r} has no queue on the bus."
            )
            return
        if from_frontend:
            if expected:
                # Only now: without a queue it was an unknown receiver after all.
                self._echo(sender, message, RoutingStatus.ROUTED)
            self._answers.delivered(sender, message, agent_id)
            if expected and self._registry.get(agent_id) is None:
                self._answers.agent_offline(agent_id)
            if not self._answers.is_answered(sender, message.message_id):
                # A fast agent may have answered already; "delivered" after the answer
                # would only confuse the sender.
                self._echo(sender, message, RoutingStatus.DELIVERED)

    async def _to_frontend(self, frontend_id: str, message: Envelope) -> None:
        session = self._sessions.get(frontend_id)
        if session is None:
            await self._forward_to_owner(frontend_id, message)
            return
        if self._answers.hold_if_refused(frontend_id, message):
            return  # the sender was told this message was not sent
        if message.message_type in (MessageType.REPLY, MessageType.REPLY_CHUNK):
            for ready in self._streams.accept(frontend_id, message):
                self._send_to_session(frontend_id, ready)
        else:
            self._send_to_session(frontend_id, message)

    def release_overdue_streams(self) -> None:
        """Finals held for chunks that never came go out now, with what did come."""
        for frontend_id, messages in self._streams.overdue():
            for message in messages:
                self._send_to_session(frontend_id, message)

    def _send_to_session(self, frontend_id: str, message: Envelope) -> None:
        session = self._sessions.get(frontend_id)
        if session is None:
            return
        answered = message.in_reply_to_message_id
        if message.message_type is MessageType.REPLY_CHUNK:
            if not session.wants_stream or (
                answered and self._answers.is_answered(frontend_id, answered)
            ):
                return  # this frontend asked for whole replies only, or the answer is final
        elif (
            answered
            and message.message_type in (MessageType.REPLY, MessageType.ERROR)
            and not self._answers.answer(frontend_id, answered)
        ):
            log.info("Dropping a second final answer to %s", answered)
            return
        frame = encode_envelope(message, for_client=True)
        if answered and message.message_type in (MessageType.REPLY, MessageType.ERROR):
            session.keep_final(answered, frame)
        self._sessions.send(frontend_id, frame)

    def _kept_final(self, frontend_id: str, message_id: str) -> bytes | None:
        session = self._sessions.get(frontend_id)
        if session is None:
            return None
        return session.final_lost_with_a_connection(message_id)

    async def _forward_to_owner(self, frontend_id: str, message: Envelope) -> None:
        owner = frontend_server_tag(frontend_id)
        if owner and owner != self._server_tag:
            # Another server process holds this frontend's socket.
            await self._bus.publish(
                server_queue(owner),
                encode_envelope(message, for_client=False),
                message_id=message.message_id,
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

    async def answer_abandoned(self) -> int:
        """Answers messages whose agent stayed offline past DELIVERY_TIMEOUT; returns how many."""
        expired = self._answers.expired()
        for entry in expired:
            await self._reject(
                entry.message,
                ErrorCode.AGENT_OFFLINE,
                f"Agent {entry.agent_id!r} went offline before answering and did not come back.",
            )
        return len(expired)

    async def _deliver_error(self, message: Envelope) -> None:
        target = (message.receiver_id or "").strip()
        if not target or target.lower() == SERVER_RECEIVER:
            target = (message.sender_id or message.client_id or "").strip()
        error = message.model_copy(
            update={
                "message_type": MessageType.ERROR,
                "routing_status": RoutingStatus.ERROR,
                "receiver_id": target,
                "error_code": message.error_code or ErrorCode.INTERNAL.value,
            }
        )
        failed = error.in_reply_to_message_id
        if (
            failed
            and is_frontend_id(target)
            and not self._answers.is_answered(target, failed)
            and not self._answers.is_refused(target, failed)
        ):
            # The sender's own message failed: its status echo says so too (PROTOCOL §3).
            await self._wait_for_pending_echo(failed)
            echo = Envelope(
                message_type=MessageType.TEXT,
                message_id=failed,
                sender_id=target,
                conversation_id=error.conversation_id,
                routing_status=RoutingStatus.ERROR,
                error_code=error.error_code,
            )
            self._sessions.send(target, encode_for_client(echo))
        await self._send_error_to(target, error)

    async def _reject(self, message: Envelope, code: ErrorCode, text: str) -> None:
        """The message cannot be delivered: its sender gets an ERROR saying why."""
        sender = (message.sender_id or message.client_id or "").strip()
        log.info("Message %s not delivered: %s", message.message_id, text)
        error = Envelope(
            message_type=MessageType.ERROR,
            sender_id="server",
            receiver_id=sender,
            text_payload=text,
            in_reply_to_message_id=message.message_id,
            conversation_id=message.conversation_id,
            routing_status=RoutingStatus.ERROR,
            error_code=code.value,
            send_timestamp=utc_now_iso(),
            client_id=message.client_id,
            server_id=message.server_id,
        )
        if is_frontend_id(sender) and message.message_type in (
            MessageType.TEXT,
            MessageType.CANCEL,
        ):
            await self._wait_for_pending_echo(message.message_id)
            self._echo(sender, message, RoutingStatus.ERROR, code)
        await self._send_error_to(sender, error)

    async def _send_error_to(self, target: str, error: Envelope) -> None:
        if not target:
            log.warning("Error %s has no one to go to; dropped", error.message_id)
            return
        if is_frontend_id(target):
            in_reply_to = error.in_reply_to_message_id
            if in_reply_to and error.message_type is MessageType.ERROR:
                # Later routing of the failed message need not wait for its echo; what waits
                # already is let go when the echo goes out.
                self._unechoed.pop(in_reply_to, None)
            await self._to_frontend(target, error)
            return
        if self._registry.get(target) is None:
            log.info("Error %s for unknown %r dropped", error.message_id, target)
            return
        try:
            await self._bus.publish(
                agent_queue(target),
                encode_for_client(error),
                message_id=error.message_id,
                mandatory=False,
                timeout=self._publish_timeout,
            )
        except BusUnavailable:
            raise
        except BusError as exc:
            log.warning("Error for agent %s could not be queued: %s", target, exc)

    # -- echoes to the sender ----------------------------------------------------------------

    def _echo(
        self,
        frontend_id: str,
        message: Envelope,
        status: RoutingStatus,
        code: ErrorCode | None = None,
    ) -> None:
        if self._answers.is_refused(frontend_id, message.message_id):
            return  # told it was not sent; a late copy on the bus says nothing new
        echo = encode_envelope(
            message,
            for_client=True,
            routing_status=status,
            error_code=code.value if code else None,
            message_type=MessageType.TEXT,
        )
        self._sessions.send(frontend_id, echo)

    def _fail_to_frontend(
        self, frontend_id: str, message: Envelope, code: ErrorCode, text: str
    ) -> None:
        if message.message_type is MessageType.TEXT:
            self._echo(frontend_id, message, RoutingStatus.ERROR, code)
        error = Envelope(
            message_type=MessageType.ERROR,
            sender_id="server",
            receiver_id=frontend_id,
            text_payload=text,
            in_reply_to_message_id=message.message_id,
            conversation_id=message.conversation_id,
            routing_status=RoutingStatus.ERROR,
            error_code=code.value,
            send_timestamp=utc_now_iso(),
        )
        self._sessions.send(frontend_id, encode_for_client(error))

    async def _wait_for_pending_echo(self, message_id: str) -> None:
        waiters = self._unechoed.get(message_id)
        if waiters is None:
            return
        echoed = asyncio.get_running_loop().create_future()
        waiters.append(echoed)
        try:
            async with asyncio.timeout(_PENDING_ECHO_WAIT_SECONDS):
                await echoed
        except TimeoutError:
            log.warning("Pending echo of %s never came; routing on", message_id)

    def _notify(self, message: Envelope) -> None:
        for observer in self._observers:
            observer(message)
