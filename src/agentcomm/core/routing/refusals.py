"""What a sender is told when its message cannot go where it should (PROTOCOL §3-§4): the
server's own refusals, a broker's refusals in the broker's words, and the answers the server
gives on a deadline (an agent that stayed away, a TEXT that got no answer at all). Each is one
ERROR for the sender, with the `error` status echo of its own message when it is a frontend's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from agentcomm.core.answers import AnswerLedger
from agentcomm.core.presence_views import AgentLookup, Reach
from agentcomm.core.routing.bounces import AnswerEvent
from agentcomm.core.routing.echoes import EchoOrder
from agentcomm.core.routing.effects import BusDown, Plan, Publish, PublishFailed, SendFrame
from agentcomm.core.routing.frontends import FrontendDelivery
from agentcomm.protocol.codec import encode_for_client
from agentcomm.protocol.ids import is_frontend_id, new_message_id
from agentcomm.protocol.models import Envelope
from agentcomm.protocol.queues import agent_queue
from agentcomm.protocol.rules import (
    SERVER_SENDER,
    broker_refusal_code,
    broker_refusal_words,
    error_envelope,
    receiver_of,
    sender_of,
    status_echo,
)
from agentcomm.protocol.timestamps import utc_now_iso
from agentcomm.protocol.vocabulary import ErrorCode, MessageType, RoutingStatus

log = logging.getLogger(__name__)


class Refusals:
    def __init__(
        self,
        *,
        registry: AgentLookup,
        answers: AnswerLedger,
        echoes: EchoOrder,
        frontends: FrontendDelivery,
        publish_timeout: float,
        on_event: Callable[[AnswerEvent], None],
    ) -> None:
        self._registry = registry
        self._answers = answers
        self._echoes = echoes
        self.frontends = frontends
        self._publish_timeout = publish_timeout
        self._notify_event = on_event

    def answer_abandoned(self) -> Plan[int]:
        """Answers messages whose agent stayed offline past DELIVERY_TIMEOUT; returns how many."""
        expired = self._answers.expired()
        for entry in expired:
            yield from self.reject(
                entry.message,
                ErrorCode.AGENT_OFFLINE,
                f"Agent {entry.agent_id!r} went offline before answering and did not come back.",
            )
        return len(expired)

    def answer_overdue(self) -> Plan[int]:
        """Answers TEXTs that had no answer at all within ANSWER_TIMEOUT; returns how many."""
        late = self._answers.overdue()
        timeout = self._answers.answer_timeout
        for entry in late:
            log.warning(
                "No answer to %s of %s within %g s: its sender is told so",
                entry.message_id,
                entry.frontend_id,
                timeout,
            )
            self._notify_event(AnswerEvent.ANSWER_TIMEOUT)
            text = (
                f"No answer came within {timeout:g} s. The agent may still be working on it, "
                "but an answer that comes now will not be shown; send the message again to retry."
            )
            message = Envelope(
                message_type=MessageType.TEXT,
                message_id=entry.message_id,
                sender_id=entry.frontend_id,
                conversation_id=entry.conversation_id,
            )
            code = ErrorCode.ANSWER_TIMEOUT
            yield from self.frontends.echo(
                entry.frontend_id, message, RoutingStatus.ERROR, code, text
            )
            error = error_envelope(
                sender_id=SERVER_SENDER,
                receiver_id=entry.frontend_id,
                code=code,
                text=text,
                in_reply_to=entry.message_id,
                conversation_id=entry.conversation_id,
            )
            yield from self.frontends.deliver(entry.frontend_id, error)
        return len(late)

    def deliver_error(self, message: Envelope) -> Plan[None]:
        target = receiver_of(message) or sender_of(message) or ""
        if is_frontend_id(target):
            yield from self._refusal_for_frontend(target, message)
            return
        error = message.model_copy(
            update={
                "message_type": MessageType.ERROR,
                "routing_status": RoutingStatus.ERROR,
                "receiver_id": target,
                "error_code": message.error_code or ErrorCode.INTERNAL.value,
                "send_timestamp": message.send_timestamp or utc_now_iso(),
            }
        )
        yield from self.send_error_to(target, error)

    def _refusal_for_frontend(self, frontend_id: str, message: Envelope) -> Plan[None]:
        """A broker's error for a frontend, in the broker's own words (PROTOCOL §4).

        The described system's broker names no code and sends the refused message itself back
        (its message_id, its sender, its text), saying why only in `routing_status_message`;
        the frontend gets an ERROR with that sentence, about that message, and its status echo.
        """
        failed = message.in_reply_to_message_id
        bounced_itself = not failed and (
            self._answers.is_awaiting(frontend_id, message.message_id)
            or self._answers.is_answered(frontend_id, message.message_id)
        )
        if bounced_itself:
            failed = message.message_id
        code = broker_refusal_code(message)
        words = broker_refusal_words(message, bounced_itself=bounced_itself)
        update: dict[str, object] = {
            "message_type": MessageType.ERROR,
            "routing_status": RoutingStatus.ERROR,
            "receiver_id": frontend_id,
            "error_code": code,
            "text_payload": words,
            "in_reply_to_message_id": failed,
            "send_timestamp": message.send_timestamp or utc_now_iso(),
        }
        if sender_of(message) == frontend_id:
            # The broker kept the refused message's sender; the error is not the frontend's own.
            update["sender_id"] = SERVER_SENDER
        if bounced_itself:
            # Not the refused message's own id, which its status echo carries.
            update.update(message_id=new_message_id(), metadata=None, seq=None, text_delta=None)
        error = message.model_copy(update=update)
        if (
            failed
            and not self._answers.is_answered(frontend_id, failed)
            and not self._answers.is_refused(frontend_id, failed)
        ):
            # The sender's own message failed: its status echo says so too (PROTOCOL §3).
            yield from self._echoes.wait(failed)
            echo = Envelope(
                message_type=MessageType.TEXT,
                message_id=failed,
                sender_id=frontend_id,
                conversation_id=error.conversation_id,
            )
            yield SendFrame(frontend_id, status_echo(echo, RoutingStatus.ERROR, code, words))
        yield from self.send_error_to(frontend_id, error)

    def reject(self, message: Envelope, code: ErrorCode, text: str) -> Plan[None]:
        """The message cannot be delivered: its sender gets an ERROR saying why."""
        sender = sender_of(message) or ""
        log.info("Message %s not delivered: %s", message.message_id, text)
        error = error_envelope(
            sender_id=SERVER_SENDER,
            receiver_id=sender,
            code=code,
            text=text,
            in_reply_to=message.message_id,
            conversation_id=message.conversation_id,
            client_id=message.client_id,
            server_id=message.server_id,
        )
        if is_frontend_id(sender) and message.message_type in (
            MessageType.TEXT,
            MessageType.CANCEL,
        ):
            yield from self._echoes.wait(message.message_id)
            yield from self.frontends.echo(sender, message, RoutingStatus.ERROR, code, text)
        yield from self.send_error_to(sender, error)

    def send_error_to(self, target: str, error: Envelope) -> Plan[None]:
        if not target:
            log.warning("Error %s has no one to go to; dropped", error.message_id)
            return
        if is_frontend_id(target):
            in_reply_to = error.in_reply_to_message_id
            if in_reply_to and error.message_type is MessageType.ERROR:
                self._echoes.stop_waiting(in_reply_to)
            yield from self.frontends.deliver(target, error)
            return
        if self._registry.reach(target) is Reach.UNKNOWN:
            log.info("Error %s for unknown %r dropped", error.message_id, target)
            return
        try:
            yield Publish(
                agent_queue(target),
                encode_for_client(error),
                error.message_id,
                mandatory=False,
                timeout=self._publish_timeout,
            )
        except BusDown:
            raise
        except PublishFailed as exc:
            log.warning("Error for agent %s could not be queued: %s", target, exc)
