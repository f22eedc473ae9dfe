"""One consumer of the RabbitMQ bus: its own channel and prefetch, a local buffer, up to
`concurrency` handlers at once, each delivery settled as the redelivery rules say; and the
listener of a topic, the same consumer with the failures of its handler dropped."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Protocol

from aio_pika.abc import AbstractRobustChannel, AbstractRobustQueue

from agentcomm.bus.base import Delivery, MessageHandler, Redelivery, Verdict, report_dropped
from agentcomm.bus.rabbitmq.connection import cancelled_by_caller
from agentcomm.bus.rabbitmq.deliveries import (
    attempt_of,
    channel_of,
    delivery_of,
    is_stale,
    unsettled_before,
)
from agentcomm.bus.rabbitmq.redelivery import Redeliveries
from agentcomm.bus.rabbitmq.turns import KeyedTurns
from agentcomm.bus.rabbitmq.wire.acks import ChannelAcks
from agentcomm.bus.rabbitmq.wire.base import TRANSPORT_ERRORS, Wire
from agentcomm.bus.rabbitmq.wire.inbound import InboundMessage

# The name operators filter on; it was the module's own name before the bus became a package.
log = logging.getLogger("agentcomm.bus.rabbitmq")

# How many handled message ids a subscription remembers (see RabbitSubscription._clear).
CLEARED_KEPT = 4096


class Owner(Protocol):
    """What a subscription uses of the bus that made it (the bus itself)."""

    # Bound on each step of cancel() that talks to the broker.
    CLOSE_TIMEOUT: float
    wire: Wire
    redeliveries: Redeliveries

    @property
    def is_connected(self) -> bool: ...

    def forget(self, subscription: RabbitSubscription) -> None:
        """Drops a cancelled subscription from the bus's own list."""


class RabbitSubscription:
    """One consumer: its own channel and prefetch, a local buffer, up to `concurrency` handlers.

    Deliveries are buffered in arrival order and a handler task is started for the oldest one
    whenever a handler slot is free (on arrival, or when a handler ends); with one slot that is
    strict queue order.
    """

    def __init__(
        self,
        bus: Owner,
        queue_name: str,
        handler: MessageHandler,
        channel: AbstractRobustChannel,
        concurrency: int,
        max_deliveries: int,
        on_dead_letter: MessageHandler | None = None,
    ) -> None:
        self.queue_name = queue_name
        self._bus = bus
        self._handler = handler
        # Its own channel: the subscription's prefetch, and a close that ends only it.
        self.channel = channel
        self._redelivery = Redelivery(max_deliveries)
        self._on_dead_letter = on_dead_letter
        # Suspects (see redelivery.py) run one at a time.
        self._suspects = asyncio.Lock()
        # Ids of the messages whose handler returned here since they were last charged, oldest
        # first (see _clear).
        self._cleared: dict[str, None] = {}
        # Held by message_id while its delivery is handled: a second delivery with that id (a
        # counted copy, a redelivery) waits for it, so the two never run at once.
        self._handling = KeyedTurns()
        # Deliveries waiting for a free handler slot, in delivery order.
        self._buffer: deque[InboundMessage] = deque()
        self._free_slots = concurrency
        self._dispatching = False
        self._in_flight: set[asyncio.Task[None]] = set()
        self._queue: AbstractRobustQueue | None = None
        self._prefetch = 0
        self._consumer_tag: str | None = None
        self._cancel_lock = asyncio.Lock()
        self._cancelled = False
        # Acks of the deliveries on the current channel (a reconnect brings a new one).
        self._acks: ChannelAcks | None = None

    def __repr__(self) -> str:
        return f"<RabbitMQ subscription to {self.queue_name!r}>"

    async def start(self, queue: AbstractRobustQueue, prefetch: int) -> None:
        """Consumes `queue`, on a channel whose prefetch was set to `prefetch`."""
        self._queue = queue
        self._prefetch = prefetch
        self._dispatching = True
        self._consumer_tag = await self._bus.wire.consume(queue, self._on_message)

    async def cancel(self) -> None:
        """Stops taking new deliveries; those being handled finish and are acked first."""
        async with self._cancel_lock:
            if self._cancelled:
                return
            self._cancelled = True
            self._dispatching = False
            if self._bus.is_connected:
                await self._cancel_consumer()
            # (Without a connection the broker has dropped the consumer already, and closing
            # the channel below keeps a reconnection from bringing it back.)
            # A handler that cancels its own subscription must not wait for itself.
            current = asyncio.current_task()
            running = [task for task in self._in_flight if task is not current]
            if running:
                await asyncio.gather(*running, return_exceptions=True)
            await self._flush_acks()
            await self._give_back_buffered()
            # Whatever is left goes back to the queue with the channel.
            await self._close_channel()
            self._bus.forget(self)

    async def _give_back_buffered(self) -> None:
        # Deliveries buffered but never started are given back as they were: returned with the
        # channel instead, they would come back looking unsettled (as if their consumer had died
        # of them) and be charged an attempt they never had.
        if not self._bus.is_connected:
            return
        try:
            async with asyncio.timeout(self._bus.CLOSE_TIMEOUT):
                while self._buffer:
                    message = self._buffer.popleft()
                    if not is_stale(message):
                        await self._bus.redeliveries.give_back(self.queue_name, message)
                        self._settled(message)
        except TimeoutError:
            log.debug("Could not give back every buffered message of %s in time", self.queue_name)

    async def abandon(self) -> None:
        """Undoes a start that failed half-way."""
        self._cancelled = True
        self._dispatching = False
        await self._close_channel()

    def _on_message(self, message: InboundMessage) -> None:
        # Called once per delivery, in delivery order; only buffering keeps that order. Also
        # while cancelling: what arrives until RabbitMQ confirms the cancel is given back.
        channel = channel_of(message)
        if channel is not None and message.delivery_tag is not None:
            acks = self._acks
            if acks is None or acks.channel is not channel:
                acks = self._acks = self._bus.wire.acks(self.channel, channel, self.queue_name)
            acks.delivered(message.delivery_tag)
        self._buffer.append(message)
        self._start_waiting()

    def _handled(self, message: InboundMessage) -> None:
        acks, tag = self._acks, message.delivery_tag
        if acks is not None and tag is not None and acks.channel is channel_of(message):
            acks.handled(tag)
        # (Otherwise its channel died: RabbitMQ has it back and delivers it again.)

    def _settled(self, message: InboundMessage) -> None:
        acks, tag = self._acks, message.delivery_tag
        if acks is not None and tag is not None and acks.channel is channel_of(message):
            acks.settled(tag)

    async def _flush_acks(self) -> None:
        acks = self._acks
        if acks is None:
            return
        try:
            async with asyncio.timeout(self._bus.CLOSE_TIMEOUT):
                await acks.flush()
        except TimeoutError:
            log.debug("Could not send every ack of %s in time", self.queue_name)

    def _start_waiting(self) -> None:
        # A handler starts right from the delivery callback or from the end of the handler
        # before it; with one slot that is strict queue order.
        buffer = self._buffer
        while self._dispatching and self._free_slots > 0 and buffer:
            message = buffer.popleft()
            if is_stale(message):
                # Its channel died (reconnect): the broker has already put it back.
                continue
            self._free_slots -= 1
            task = asyncio.create_task(
                self._handle(message), name=f"rabbitmq-handle-{self.queue_name}"
            )
            self._in_flight.add(task)
            task.add_done_callback(self._on_handled)

    async def _handle(self, message: InboundMessage) -> None:
        key = message.message_id or f"delivery-{id(message)}"
        await self._handling.take(key)
        try:
            await self._handle_one(message)
        finally:
            self._handling.give_back(key)

    async def _handle_one(self, message: InboundMessage) -> None:
        attempt = attempt_of(message)
        delivery = delivery_of(self.queue_name, message, attempt)
        if unsettled_before(message) and not self._pass_cleared(message):
            await self._handle_suspect(message, delivery)
            return
        try:
            await self._handler(delivery)
        except (Exception, asyncio.CancelledError) as exc:
            verdict = self._redelivery.after(exc, attempt)
            self._redelivery.report(log, verdict, exc, delivery)
            if verdict is Verdict.BUS_FAILED:
                # It goes back through the broker and returns flagged redelivered, like a
                # message that killed its consumer; noted here, it goes on uncharged, so that
                # a bus failing for a while (a node stopped, a quorum queue electing its
                # leader) does not use up the attempts of what it was handling.
                self._clear(message)
            await self._bus.redeliveries.carry_out(
                verdict, self.queue_name, message, attempt, self._on_dead_letter
            )
            self._settled(message)
            if isinstance(exc, asyncio.CancelledError):
                raise
        else:
            if message.redelivered:
                # Only what came back unsettled once is noted: such a message was caught in a
                # crash before and is the one likely to be caught again.
                self._clear(message)
            self._handled(message)

    def _clear(self, message: InboundMessage) -> None:
        """Notes that `message`'s handler returned here: should it come back unsettled, a
        crash of another message took its ack with it.

        Without this, a message that happens to be in flight each time a poison message
        kills the consumer is charged every time too, and dead-lettered with it: each charge
        leaves a counted copy that the next crash catches unacked again. (It happens when
        RabbitMQ hands the suspects out before the poison message's own copy, as a quorum
        queue does.)"""
        message_id = message.message_id
        if not message_id:
            return
        cleared = self._cleared
        cleared.pop(message_id, None)
        cleared[message_id] = None
        if len(cleared) > CLEARED_KEPT:
            del cleared[next(iter(cleared))]

    def _pass_cleared(self, message: InboundMessage) -> bool:
        """Whether a message that came back unsettled was handled here since it was last
        charged; it then goes on uncharged, once (a message that kills its consumer never
        returns from its handler, so it is never cleared again)."""
        message_id = message.message_id
        if not message_id or message_id not in self._cleared:
            return False
        del self._cleared[message_id]
        log.info(
            "Message %s on %s came back unsettled after it was handled here; not charged",
            message_id,
            self.queue_name,
        )
        return True

    async def _handle_suspect(self, message: InboundMessage, delivery: Delivery) -> None:
        async with self._suspects:
            log.info(
                "Message %s on %s came back unsettled (attempt %d of %d); charging it first",
                message.message_id,
                self.queue_name,
                delivery.attempt,
                self._redelivery.max_deliveries,
            )
            charged = await self._bus.redeliveries.carry_out(
                self._redelivery.charge(delivery.attempt),
                self.queue_name,
                message,
                delivery.attempt,
                self._on_dead_letter,
            )
            self._settled(message)
            if not charged:
                return  # dead-lettered, or back with RabbitMQ to be tried again
            if not await self._ack_taken(message):
                return  # the counted copy in the queue is its next attempt
            try:
                await self._handler(delivery)
            except Exception as exc:
                # The charged copy in the queue is its next attempt.
                log.info(
                    "Handler failed for message %s on %s; its counted copy retries it: %r",
                    message.message_id,
                    self.queue_name,
                    exc,
                )
            else:
                self._clear(message)

    async def _ack_taken(self, message: InboundMessage) -> bool:
        """Waits until RabbitMQ has taken the ack of a charged suspect, before its handler
        may kill the process: an ack still on its way when the process dies is lost with it,
        and the suspect would come back uncharged beside its counted copy, to be run and
        charged again. RabbitMQ handles a channel's methods in order, so the answer to a Qos
        sent after the ack (the prefetch the channel has already) means the ack was taken.
        False when the channel died first: the counted copy is then its next attempt."""
        try:
            async with asyncio.timeout(self._bus.CLOSE_TIMEOUT):
                await message.channel.basic_qos(prefetch_count=self._prefetch)
        except (TimeoutError, *TRANSPORT_ERRORS) as exc:
            log.info(
                "Message %s on %s: its ack may not have reached RabbitMQ (%r); its counted "
                "copy handles it",
                message.message_id,
                self.queue_name,
                exc,
            )
            return False
        return True

    def _on_handled(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._free_slots += 1
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("Settling a delivery on %s failed", self.queue_name, exc_info=exc)
        self._start_waiting()

    async def _cancel_consumer(self) -> None:
        queue, tag = self._queue, self._consumer_tag
        if queue is None or tag is None:
            return
        try:
            async with asyncio.timeout(self._bus.CLOSE_TIMEOUT):
                # Also forgets the consumer, so a reconnect does not bring it back.
                await queue.cancel(tag)
        except (TimeoutError, *TRANSPORT_ERRORS) as exc:
            log.debug("Cancelling the consumer of %s failed: %r", self.queue_name, exc)
        except asyncio.CancelledError:
            if cancelled_by_caller():
                raise
            log.debug("The channel of %s died while its consumer was cancelled", self.queue_name)

    async def _close_channel(self) -> None:
        if not self.channel.is_initialized:
            return
        try:
            async with asyncio.timeout(self._bus.CLOSE_TIMEOUT):
                await self.channel.close()
        except (TimeoutError, *TRANSPORT_ERRORS) as exc:
            log.debug("Closing the channel of %s failed: %r", self.queue_name, exc)
        except asyncio.CancelledError:
            if cancelled_by_caller():
                raise
            log.debug("The channel of %s died while it was closed", self.queue_name)


class ListenerSubscription(RabbitSubscription):
    """The listener of a topic: one delivery at a time, in order, acked whether its handler
    returned or raised (a failure is logged and the broadcast dropped, never retried).

    Its queue is exclusive and auto-delete: cancelling the consumer removes it, and so does
    the end of the connection, after which aio-pika declares, binds and consumes it again on
    the new one."""

    def __init__(
        self,
        bus: Owner,
        topic: str,
        queue_name: str,
        handler: MessageHandler,
        channel: AbstractRobustChannel,
    ) -> None:
        super().__init__(bus, queue_name, handler, channel, concurrency=1, max_deliveries=1)
        self.topic = topic

    def __repr__(self) -> str:
        return f"<RabbitMQ listener of {self.topic!r}>"

    async def _handle_one(self, message: InboundMessage) -> None:
        delivery = delivery_of(self.topic, message, 1)
        try:
            await self._handler(delivery)
        except (Exception, asyncio.CancelledError) as exc:
            report_dropped(log, exc, delivery)
            self._handled(message)
            if isinstance(exc, asyncio.CancelledError):
                raise
        else:
            self._handled(message)

    async def _give_back_buffered(self) -> None:
        # Nobody else reads this queue, and it goes away with the listener.
        self._buffer.clear()
