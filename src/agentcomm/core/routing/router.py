"""The server's routing decisions (PROTOCOL §4), written once for every transport.

Inputs: a frontend's frame (WebSocket), an agent's message (gRPC), and the broker's output on
`server_input_queue`. Each entry point is a `Plan`: it decides, yields the effects — publishes
on the bus, frames to frontend sessions, status echoes of a sender's own message (`pending` →
`routed` → `delivered`, or `error`) — and decides again on what each publish came to. The
server carries the effects out (`server/routing.py`); nothing here does I/O.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from agentcomm.core.answers import AnswerLedger
from agentcomm.core.clock import Clock, SystemClock
from agentcomm.core.presence_views import AgentLookup, Reach
from agentcomm.core.routing.bounces import AnswerEvent, AnswerEventObserver, BouncedAnswers
from agentcomm.core.routing.echoes import EchoOrder
from agentcomm.core.routing.effects import (
    BusDown,
    Plan,
    Publish,
    PublishFailed,
    QueueMissing,
)
from agentcomm.core.routing.frontends import FrontendDelivery
from agentcomm.core.routing.multitask import ConversationGate
from agentcomm.core.routing.refusals import Refusals
from agentcomm.core.sessions import FrontendSessions
from agentcomm.core.streams import ReplyStreams
from agentcomm.protocol.codec import encode_envelope
from agentcomm.protocol.errors import ProtocolError
from agentcomm.protocol.ids import is_frontend_id, server_tag
from agentcomm.protocol.models import Envelope
from agentcomm.protocol.queues import BROKER_INPUT_QUEUE, agent_queue
from agentcomm.protocol.rules import (
    Multitask,
    check_from_agent,
    check_from_frontend,
    check_frontend_receiver,
    frontend_concerned,
    multitask_policy,
    receiver_of,
    sender_of,
)
from agentcomm.protocol.timestamps import utc_now_iso
from agentcomm.protocol.vocabulary import ErrorCode, MessageType, RoutingStatus

log = logging.getLogger(__name__)

RouteObserver = Callable[[Envelope], None]
# (frontend_id, message): a TEXT of that frontend the server accepted (the bus took it), or the
# one final REPLY or ERROR that answers one, as it goes to the frontend.
ConversationObserver = Callable[[str, Envelope], None]


class ServerRouter:
    """Where each message goes, and what its sender is told about it."""

    def __init__(
        self,
        *,
        server_id: str,
        registry: AgentLookup,
        sessions: FrontendSessions,
        answers: AnswerLedger,
        streams: ReplyStreams,
        publish_timeout: float = 5.0,
        clock: Clock | None = None,
        expect_agents_for: float = 0.0,
        peer_is_live: Callable[[str], bool] | None = None,
    ) -> None:
        """`expect_agents_for`: seconds after this router is made during which an agent it does
        not know yet, but whose queue exists, counts as one coming back (see _to_agent).
        `peer_is_live(tag)`: whether a live peer hub carries that server tag (a cluster)."""
        self._server_id = server_id
        self._registry = registry
        self._answers = answers
        self._publish_timeout = publish_timeout
        self._clock = clock or SystemClock()
        self._expect_agents_until = self._clock.monotonic() + expect_agents_for
        self._echoes = EchoOrder()
        self._sessions = sessions
        self.frontends = FrontendDelivery(
            peer_is_live=peer_is_live,
            server_tag=server_tag(server_id),
            sessions=sessions,
            answers=answers,
            streams=streams,
            publish_timeout=publish_timeout,
        )
        self._gate = ConversationGate(self._clock, sessions, hold_for=answers.answer_timeout)
        # A TEXT's final answer lets go of its conversation (double-texting).
        self.frontends.final_observers.append(
            lambda frontend_id, final: self._gate.finished(
                frontend_id, final.in_reply_to_message_id or ""
            )
        )
        self._observers: list[RouteObserver] = []
        self._text_observers: list[ConversationObserver] = []
        self._event_observers: list[AnswerEventObserver] = []
        self._refusals = Refusals(
            registry=registry,
            answers=answers,
            echoes=self._echoes,
            frontends=self.frontends,
            publish_timeout=publish_timeout,
            on_event=self._notify_event,
        )
        self._bounced = BouncedAnswers(
            server_tag=server_tag(server_id),
            registry=registry,
            sessions=sessions,
            answers=answers,
            frontends=self.frontends,
            on_event=self._notify_event,
        )

    def observe(self, observer: RouteObserver) -> None:
        """Calls `observer` with every message the router handles (metrics, tests)."""
        self._observers.append(observer)

    def observe_conversations(
        self, on_text: ConversationObserver, on_final: ConversationObserver
    ) -> None:
        """Calls `on_text` with every TEXT a frontend of this server sent that the bus took,
        and `on_final` with the final answer to each as it goes out (conversation history)."""
        self._text_observers.append(on_text)
        self.frontends.final_observers.append(on_final)

    def observe_answer_events(self, observer: AnswerEventObserver) -> None:
        """Calls `observer` with what became of answers it had to look after (metrics)."""
        self._event_observers.append(observer)

    # -- from frontends ----------------------------------------------------------------------

    @property
    def publish_timeout(self) -> float:
        return self._publish_timeout

    def accept_from_frontend(
        self, frontend_id: str, message: Envelope, *, time_left: float | None = None
    ) -> Plan[None]:
        """A TEXT or CANCEL from a registered frontend. Raises ProtocolError on bad input.

        `time_left`: seconds the sender may still wait for an answer about the publish (its
        frame may have queued up behind others while the bus was slow); by default the
        publish timeout.
        """
        check_from_frontend(message)
        if message.message_type is MessageType.CANCEL:
            self._check_cancellable(frontend_id, message)
        receiver = receiver_of(message) or ""
        if not receiver and message.message_type is MessageType.CANCEL:
            # Name the agent working on it, so that any broker can route the CANCEL.
            receiver = (
                self._answers.agent_for(frontend_id, message.in_reply_to_message_id or "") or ""
            )
        check_frontend_receiver(receiver, message.message_id)
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
        frontends = self.frontends
        is_text = outgoing.message_type is MessageType.TEXT
        if is_text and not self._answers.first_time_accepted(frontend_id, outgoing.message_id):
            # A re-sent copy (the frontend lost its connection before our echo): it is on the
            # bus already, so only say so again.
            if not self._answers.is_answered(frontend_id, outgoing.message_id):
                yield from frontends.echo(frontend_id, outgoing, RoutingStatus.PENDING)
            else:
                yield from frontends.answer_again(frontend_id, outgoing)
            return
        if is_text:
            kept = self._answers.resent_after_refusal(frontend_id, outgoing.message_id)
            if kept is not None:
                # The refused copy reached the bus after all, and its answer came meanwhile.
                yield from frontends.echo(frontend_id, outgoing, RoutingStatus.PENDING)
                yield from frontends.deliver(frontend_id, kept)
                return
        if is_text:
            gate = self._gate.key(frontend_id, outgoing)
            if multitask_policy(outgoing) is Multitask.REJECT and self._gate.busy(gate):
                self._answers.forget_accepted(frontend_id, outgoing.message_id)
                yield from frontends.refuse(
                    frontend_id,
                    outgoing,
                    ErrorCode.CONVERSATION_BUSY,
                    "An answer in this conversation is still running; send again once it is "
                    "final (or without metadata.multitask: reject).",
                )
                return
            self._gate.start(gate, frontend_id, outgoing.message_id)
        waiters = self._echoes.expect(outgoing.message_id)
        timeout = self._publish_timeout if time_left is None else time_left
        try:
            if timeout <= 0:
                raise BusDown("Earlier messages used up this one's time waiting for the bus.")
            yield Publish(
                BROKER_INPUT_QUEUE,
                encode_envelope(outgoing, for_client=False),
                outgoing.message_id,
                timeout=timeout,
            )
        except PublishFailed as exc:
            self._echoes.echoed(outgoing.message_id, waiters)
            log.warning("Could not hand %s to the broker: %s", outgoing.message_id, exc)
            yield from frontends.refuse(
                frontend_id,
                outgoing,
                ErrorCode.BUS_UNAVAILABLE,
                "The message bus is unavailable; the message was not sent. Try again shortly.",
            )
            if is_text:
                self._answers.refused(frontend_id, outgoing.message_id)
                self._gate.finished(frontend_id, outgoing.message_id)
            return
        except Exception:
            # Failed before it reached the bus: a re-send with the same id is handled anew
            # rather than echoed `pending` for a message that is nowhere.
            self._echoes.echoed(outgoing.message_id, waiters)
            if is_text:
                self._answers.forget_accepted(frontend_id, outgoing.message_id)
                self._gate.finished(frontend_id, outgoing.message_id)
            raise
        except BaseException:
            # Cancelled while publishing: whoever waits for the echo goes on.
            self._echoes.echoed(outgoing.message_id, waiters)
            raise
        if is_text:
            self._answers.await_answer(frontend_id, outgoing)
            for observer in self._text_observers:
                observer(frontend_id, outgoing)
            yield from frontends.echo(frontend_id, outgoing, RoutingStatus.PENDING)
        self._echoes.echoed(outgoing.message_id, waiters)
        self._notify(outgoing)

    # -- from agents over gRPC ---------------------------------------------------------------

    def accept_from_agent(self, agent_id: str, message: Envelope) -> Plan[Envelope]:
        """An agent's REPLY / REPLY_CHUNK / SYSTEM / ERROR, published towards the broker."""
        check_from_agent(message)
        update: dict[str, object] = {
            "sender_id": agent_id,
            "routing_status": RoutingStatus.PENDING,
            "send_timestamp": message.send_timestamp or utc_now_iso(),
        }
        if message.message_type is MessageType.CANCEL and receiver_of(message) is None:
            # A call by capability: name the agent it went to, as for a frontend's CANCEL, so
            # that any broker can route it (not only the one that chose the agent).
            update["receiver_id"] = self._answers.agent_for(
                agent_id, message.in_reply_to_message_id or ""
            )
        outgoing = message.model_copy(update=update)
        frontend = self.frontends.route_known(agent_id, outgoing)
        if frontend is not None:
            # A chunk of an answer this hub routed: to its frontend now, in stream order.
            self._notify(outgoing)
            yield from self.frontends.deliver(frontend, outgoing)
            return outgoing
        # Before the publish: the broker may send it back before the bus confirms it.
        self._bounced.passing(outgoing)
        yield Publish(
            BROKER_INPUT_QUEUE,
            encode_envelope(outgoing, for_client=False),
            outgoing.message_id,
            timeout=self._publish_timeout,
        )
        self._notify(outgoing)
        return outgoing

    # -- from the broker ---------------------------------------------------------------------

    def handle_broker_output(self, message: Envelope) -> Plan[None]:
        """A message from `server_input_queue`: deliver it, or tell its sender why not.

        A publish it needs that fails is let through (the bus message is then not acked and
        comes back once the bus is healthy again).
        """
        self._notify(message)
        if (yield from self._bounced.take(message)):
            return  # an answer the broker should have passed on: on its way to who asked
        frontend = frontend_concerned(message)
        if frontend is not None and self.frontends.held_elsewhere(frontend):
            # Whatever concerns a frontend is decided by the hub that holds it: routed to an
            # agent from there, echoed and answered once there.
            yield from self.frontends.forward_to_owner(frontend, message)
            return
        if message.routing_status is RoutingStatus.ERROR or (
            message.message_type is MessageType.ERROR and message.routing_status is None
        ):
            yield from self._refusals.deliver_error(message)
            return
        receiver = receiver_of(message)
        if receiver is None:
            yield from self._refusals.reject(
                message, ErrorCode.UNKNOWN_RECEIVER, "The broker routed the message to no one."
            )
            return
        if is_frontend_id(receiver):
            if self._unsolicited(receiver, message):
                yield from self._refusals.reject(
                    message,
                    ErrorCode.UNKNOWN_RECEIVER,
                    f"An agent sends SYSTEM only to a frontend that wrote to it; {receiver} "
                    "did not.",
                )
                return
            yield from self.frontends.deliver(receiver, message)
            return
        yield from self._to_agent(receiver, message)

    def _unsolicited(self, frontend_id: str, message: Envelope) -> bool:
        """A SYSTEM notice from an agent to a frontend of this server that never wrote to it:
        a frontend's id is no licence to push text at it. (Another server's frontend is judged
        by that server.)"""
        if message.message_type is not MessageType.SYSTEM:
            return False
        sender = sender_of(message) or ""
        return (
            self._registry.reach(sender) is not Reach.UNKNOWN
            and self._sessions.get(frontend_id) is not None
            and not self._answers.in_conversation(frontend_id, sender)
        )

    def _check_cancellable(self, frontend_id: str, message: Envelope) -> None:
        """A CANCEL names a TEXT of this frontend that is under way; ProtocolError otherwise,
        so that it is answered instead of passed on to nobody."""
        target = message.in_reply_to_message_id or ""
        if self._answers.is_answered(frontend_id, target):
            raise ProtocolError(
                ErrorCode.UNKNOWN_MESSAGE,
                f"Message {target} has its final answer already; there is nothing to cancel.",
                message.message_id,
            )
        if not self._answers.knows(frontend_id, target):
            raise ProtocolError(
                ErrorCode.UNKNOWN_MESSAGE,
                f"No message {target} of yours is known here; there is nothing to cancel.",
                message.message_id,
            )

    def _to_agent(self, agent_id: str, message: Envelope) -> Plan[None]:
        reach = self._registry.reach(agent_id)
        # A server that has just started knows no agent yet: those of the server before it (a
        # restart) are on their way back. Their messages wait in their queues, and their
        # senders get ERROR agent_offline if they are not back within DELIVERY_TIMEOUT.
        unknown = reach is Reach.UNKNOWN
        expected = unknown and self._clock.monotonic() < self._expect_agents_until
        if unknown and not expected:
            yield from self._refusals.reject(
                message, ErrorCode.UNKNOWN_RECEIVER, f"No agent is registered as {agent_id!r}."
            )
            return
        if reach is Reach.OFFLINE:
            yield from self._refusals.reject(
                message, ErrorCode.AGENT_OFFLINE, f"Agent {agent_id!r} is offline."
            )
            return
        sender = sender_of(message) or ""
        is_text = message.message_type is MessageType.TEXT
        from_frontend = is_frontend_id(sender) and is_text
        frontends = self.frontends
        if from_frontend:
            yield from self._echoes.wait(message.message_id)
            if not expected:
                yield from frontends.echo(sender, message, RoutingStatus.ROUTED)
        try:
            yield Publish(
                agent_queue(agent_id),
                # Internal fields stay on the server's side (PROTOCOL §0).
                encode_envelope(message, for_client=True, routing_status=RoutingStatus.DELIVERED),
                message.message_id,
                timeout=self._publish_timeout,
            )
        except QueueMissing:
            if expected:
                yield from self._refusals.reject(
                    message, ErrorCode.UNKNOWN_RECEIVER, f"No agent is registered as {agent_id!r}."
                )
                return
            yield from self._refusals.reject(
                message, ErrorCode.AGENT_OFFLINE, f"Agent {agent_id!r} has no queue on the bus."
            )
            return
        if not from_frontend:
            # Calls between agents are looked after too (AnswerLedger.call_reached).
            self._answers.call_reached(agent_id, message, sender if is_text else None)
            return
        if expected:
            # Only now: without a queue it was an unknown receiver after all.
            yield from frontends.echo(sender, message, RoutingStatus.ROUTED)
        self._answers.delivered(sender, message, agent_id)
        if expected and self._registry.reach(agent_id) is Reach.UNKNOWN:
            self._answers.agent_offline(agent_id)
        if not self._answers.is_answered(sender, message.message_id):
            # A fast agent may have answered already; "delivered" after the answer
            # would only confuse the sender.
            yield from frontends.echo(sender, message, RoutingStatus.DELIVERED)

    def release_overdue_streams(self) -> Plan[None]:
        """Finals held for chunks that never came go out now, with what did come."""
        yield from self.frontends.release_overdue_streams()

    def answer_abandoned(self) -> Plan[int]:
        """Answers messages whose agent stayed offline past DELIVERY_TIMEOUT; returns how many."""
        return (yield from self._refusals.answer_abandoned())

    def answer_overdue(self) -> Plan[int]:
        """Answers TEXTs that had no answer at all within ANSWER_TIMEOUT; returns how many."""
        return (yield from self._refusals.answer_overdue())

    def _notify(self, message: Envelope) -> None:
        for observer in self._observers:
            observer(message)

    def _notify_event(self, event: AnswerEvent) -> None:
        for observer in self._event_observers:
            observer(event)
