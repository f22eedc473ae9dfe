"""Chat work for agents that receive it over gRPC instead of consuming their bus queue.

The server consumes `agent_queue_<id>` on the agent's behalf. A message is handed to the agent's
stream and acked on the bus only when the agent acknowledges it; if the stream ends first, the
message goes back to the queue, so an agent that dies mid-message gets it again when it returns.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agentcomm.bus.base import Bus, Delivery, NotTaken, Requeue, Subscription
from agentcomm.protocol.codec import decode_envelope, encode_for_bus
from agentcomm.protocol.errors import ProtocolError
from agentcomm.protocol.ids import answer_message_id
from agentcomm.protocol.queues import BROKER_INPUT_QUEUE, agent_queue
from agentcomm.protocol.rules import error_envelope
from agentcomm.protocol.vocabulary import ErrorCode, MessageType, RoutingStatus

if TYPE_CHECKING:
    from agentcomm.telemetry.spans import Tracing

log = logging.getLogger(__name__)

# What one batch of messages may hold, in bytes. A backlog of large messages would otherwise go
# out as one write over the agent's receive limit (gRPC's default is 4 MiB), which fails the
# whole stream, charges every message in it an attempt, and then fails the same way again.
MAX_BATCH_BYTES = 1024 * 1024

# A message's share of a batch besides its body: its id, the agent id (at most 128 characters)
# and the framing around them.
_ITEM_OVERHEAD = 160


class InboxClosed(Requeue):
    """The agent's stream ended before it acknowledged the message: it goes back to the queue."""


@dataclass(frozen=True, slots=True)
class InboxItem:
    message_id: str
    body: bytes
    # The trace context of its delivery span when tracing is on (ChatMessage.traceparent).
    traceparent: str = ""


class AgentInbox:
    """One open ReceiveMessages stream: deliveries out, acknowledgements in."""

    def __init__(
        self, bus: Bus, agent_id: str, prefetch: int, tracing: Tracing | None = None
    ) -> None:
        self.agent_id = agent_id
        self._bus = bus
        self._tracing = tracing
        self._prefetch = prefetch
        self._outgoing: asyncio.Queue[InboxItem | None] = asyncio.Queue()
        # Taken from _outgoing for a batch it did not fit in: the next batch starts with it.
        self._leftover: InboxItem | None = None
        self._awaiting_ack: dict[str, asyncio.Future[bool]] = {}
        self._subscription: Subscription | None = None
        self._closed = False
        # Who may go to the agent now (see _hand_over); notified whenever that may change.
        self._changed = asyncio.Condition()
        self._suspects_waiting = 0
        self._suspect_out = False

    async def open(self) -> None:
        self._subscription = await self._bus.consume(
            agent_queue(self.agent_id),
            self._hand_over,
            prefetch=self._prefetch,
            concurrency=self._prefetch,
            on_dead_letter=self._gave_up,
        )

    async def _gave_up(self, delivery: Delivery) -> None:
        """Out of attempts (the agent kept giving it back, or kept dying with it): the bus drops
        it, and its sender is told, on the agent's behalf, instead of waiting forever."""
        try:
            message = decode_envelope(delivery.body)
        except ProtocolError:
            return
        if message.message_type is not MessageType.TEXT or not message.sender_id:
            return
        error = error_envelope(
            sender_id=self.agent_id,
            receiver_id=message.sender_id,
            code=ErrorCode.INTERNAL,
            text=f"Agent {self.agent_id} could not handle this message: it was tried "
            f"{delivery.attempt} times and given up.",
            in_reply_to=message.message_id,
            conversation_id=message.conversation_id,
            client_id=message.client_id,
            server_id=message.server_id,
            hops=message.hops,
            # Published for the broker to route, like an answer of the agent's own, with an
            # id that names the message it answers (as the SDK's answers have).
            routing_status=RoutingStatus.PENDING,
            message_id=answer_message_id(
                message.sender_id, message.message_id, error_code=ErrorCode.INTERNAL
            ),
        )
        await self._bus.publish(
            BROKER_INPUT_QUEUE, encode_for_bus(error), message_id=error.message_id
        )

    async def next(self) -> InboxItem | None:
        """The next message for the agent; None once the inbox is closed."""
        return await self._outgoing.get()

    async def next_batch(
        self, linger: float = 0.0, *, busy: int = 1, max_bytes: int = MAX_BATCH_BYTES
    ) -> list[InboxItem]:
        """The next message and every other one ready with it, up to `max_bytes` (the first
        one always); empty once the inbox is closed. While the agent still has at least `busy`
        earlier messages in hand, it waits `linger` seconds for more to share the batch: the
        agent has work meanwhile, and each batch costs a write."""
        first, self._leftover = self._leftover, None
        if first is None:
            first = await self._outgoing.get()
        if first is None:
            return []
        # Every message handed over awaits its ack, also those still queued here.
        earlier = len(self._awaiting_ack) - 1 - self._outgoing.qsize()
        if linger and earlier >= busy:
            await asyncio.sleep(linger)
        batch = [first]
        size = _size_of(first)
        while not self._outgoing.empty():
            item = self._outgoing.get_nowait()
            if item is None:
                # The end comes after this batch: the next call sees it.
                self._outgoing.put_nowait(None)
                break
            size += _size_of(item)
            if size > max_bytes:
                # It leads the next batch, ahead of what is still queued.
                self._leftover = item
                break
            batch.append(item)
        return batch

    def acknowledge(self, message_id: str, handled: bool) -> bool:
        future = self._awaiting_ack.get(message_id)
        if future is None:
            return False
        if not future.done():
            future.set_result(handled)
        return True

    async def close(self) -> None:
        if self._closed:
            return
        async with self._changed:
            self._closed = True
            self._changed.notify_all()
        for future in self._awaiting_ack.values():
            if not future.done():
                future.set_exception(InboxClosed("the agent's stream closed before its ack"))
        if self._subscription is not None:
            await self._subscription.cancel()
        self._outgoing.put_nowait(None)

    async def _hand_over(self, delivery: Delivery) -> None:
        message_id = delivery.message_id or f"delivery-{id(delivery)}"
        # A message that failed before may be one that kills the agent: it goes to the agent
        # alone, so that a crash is charged to it and not to every message in hand with it.
        suspect = delivery.attempt > 1
        async with self._changed:
            self._suspects_waiting += suspect
            try:
                # An id already with the agent (a redelivery of it, or another sender's message
                # that shares it: acks name only the id) goes after it.
                await self._changed.wait_for(
                    lambda: (
                        self._closed
                        or (
                            message_id not in self._awaiting_ack
                            and not self._suspect_out
                            and (not self._awaiting_ack if suspect else not self._suspects_waiting)
                        )
                    )
                )
            finally:
                self._suspects_waiting -= suspect
            if self._closed:
                raise NotTaken("the agent's stream closed before it got the message")
            future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            self._awaiting_ack[message_id] = future
            self._suspect_out = suspect
        span = None
        if self._tracing is not None and self._tracing.in_trace():
            # From the hand-over to the agent's ack: the gRPC delivery and the agent's work.
            span = self._tracing.start(
                f"deliver to agent {self.agent_id}",
                "producer",
                attributes={
                    "rpc.system": "grpc",
                    "rpc.service": "AgentRegistrationService",
                    "agentcomm.message.id": message_id,
                    "agentcomm.agent.id": self.agent_id,
                },
            )
            item = InboxItem(message_id, delivery.body, self._tracing.traceparent_of(span))
        else:
            item = InboxItem(message_id, delivery.body)
        try:
            self._outgoing.put_nowait(item)
            handled = await future
        finally:
            if span is not None:
                span.end()
            async with self._changed:
                self._awaiting_ack.pop(message_id, None)
                if suspect:
                    self._suspect_out = False
                self._changed.notify_all()
        if not handled:
            raise InboxClosed("the agent could not take it")


def _size_of(item: InboxItem) -> int:
    return len(item.body) + len(item.message_id) + _ITEM_OVERHEAD


class AgentInboxes:
    """The open inboxes by agent id (one stream per agent; a newer stream replaces the older)."""

    def __init__(self, bus: Bus, tracing: Tracing | None = None) -> None:
        self._bus = bus
        self._tracing = tracing
        self._open: dict[str, AgentInbox] = {}

    async def open(self, agent_id: str, prefetch: int) -> AgentInbox:
        previous = self._open.pop(agent_id, None)
        if previous is not None:
            await previous.close()
        inbox = AgentInbox(self._bus, agent_id, prefetch, self._tracing)
        await inbox.open()
        self._open[agent_id] = inbox
        return inbox

    def get(self, agent_id: str) -> AgentInbox | None:
        return self._open.get(agent_id)

    async def close(self, inbox: AgentInbox) -> None:
        if self._open.get(inbox.agent_id) is inbox:
            del self._open[inbox.agent_id]
        await inbox.close()

    async def close_all(self) -> None:
        for inbox in list(self._open.values()):
            await self.close(inbox)
