"""Deliveries straight from aiormq, without aio-pika's per-delivery wrappers.

aio-pika hands each delivery to a consumer as an IncomingMessage (which copies every property
into a new object) from a task of its own, on top of the task aiormq already runs the consumer
callback in. A bus process does nothing with a delivery but read its body and a few properties
and ack it later, so the RabbitMQ bus consumes through `DirectRobustQueue`, which passes aiormq's
delivery to a `RawConsumer` as it is, wrapped in the slim `InboundMessage`.

Everything that makes the consumer robust stays aio-pika's: the consumer is registered with
the queue like any other, so a reconnect re-declares the queue and consumes it again, and a
consumer RabbitMQ cancels makes the connection recover.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aio_pika.abc import AbstractIncomingMessage, ConsumerTag, TimeoutType
from aio_pika.robust_channel import RobustChannel
from aio_pika.robust_queue import RobustQueue
from aiormq.abc import AbstractChannel, DeliveredMessage
from aiormq.exceptions import ChannelInvalidStateError
from pamqp.common import Arguments, FieldTable

from agentcomm.bus.gathering import GatheringRobustConnection


class InboundMessage:
    """One delivery: its body, the properties the bus reads, and how to settle it."""

    __slots__ = ("_channel", "body", "delivery_tag", "properties", "redelivered")

    def __init__(self, delivered: DeliveredMessage) -> None:
        self.body = delivered.body
        self.delivery_tag = delivered.delivery_tag
        self.redelivered = bool(delivered.redelivered)
        self.properties = delivered.header.properties
        self._channel = delivered.channel

    @property
    def message_id(self) -> str | None:
        return self.properties.message_id

    @property
    def headers(self) -> FieldTable:
        return self.properties.headers or {}

    @property
    def channel(self) -> AbstractChannel:
        """The channel it came on; raises ChannelInvalidStateError once that has closed."""
        if self._channel.is_closed:
            raise ChannelInvalidStateError("The channel of this delivery has closed.")
        return self._channel

    async def ack(self) -> None:
        await self.channel.basic_ack(self._tag())

    async def nack(self, *, requeue: bool = True) -> None:
        await self.channel.basic_nack(self._tag(), requeue=requeue)

    async def reject(self, *, requeue: bool = False) -> None:
        await self.channel.basic_reject(self._tag(), requeue=requeue)

    def _tag(self) -> int:
        if self.delivery_tag is None:
            raise ChannelInvalidStateError("A delivery without a tag cannot be settled.")
        return self.delivery_tag


class RawConsumer:
    """A consumer callback that takes InboundMessages (see DirectRobustQueue)."""

    def __init__(self, on_message: Callable[[InboundMessage], Awaitable[None]]) -> None:
        self._on_message = on_message

    async def on_delivery(self, delivered: DeliveredMessage) -> None:
        await self._on_message(InboundMessage(delivered))

    def __call__(self, message: AbstractIncomingMessage) -> Awaitable[None]:
        # Only so that it can stand where aio-pika expects a callback; DirectRobustQueue never
        # calls it this way.
        raise TypeError("A RawConsumer takes deliveries through DirectRobustQueue only.")


class DirectRobustQueue(RobustQueue):
    """aio-pika's robust queue, consuming for a RawConsumer without the per-delivery wrapping."""

    async def consume(
        self,
        callback: Callable[[AbstractIncomingMessage], Awaitable[Any]],
        no_ack: bool = False,
        exclusive: bool = False,
        arguments: Arguments = None,
        consumer_tag: ConsumerTag | None = None,
        timeout: TimeoutType = None,
        robust: bool = True,
    ) -> ConsumerTag:
        if not isinstance(callback, RawConsumer):
            return await super().consume(
                callback, no_ack, exclusive, arguments, consumer_tag, timeout, robust
            )
        channel = await self.channel.get_underlay_channel()
        result = await channel.basic_consume(
            queue=self.name,
            consumer_callback=callback.on_delivery,
            exclusive=exclusive,
            no_ack=no_ack,
            arguments=arguments,
            consumer_tag=consumer_tag,
            timeout=timeout,
        )
        if result.consumer_tag is None:
            raise RuntimeError("RabbitMQ gave the consumer no tag.")
        if robust:
            # As RobustQueue.consume registers it: a restored channel consumes again with it
            # (through this method), and a cancel forgets it.
            self._consumers[result.consumer_tag] = {
                "callback": callback,
                "no_ack": no_ack,
                "exclusive": exclusive,
                "arguments": arguments,
            }
        return result.consumer_tag


class DirectRobustChannel(RobustChannel):
    QUEUE_CLASS = DirectRobustQueue


class BusConnection(GatheringRobustConnection):
    """The RabbitMQ bus's connection: gathered writes, and queues that consume directly."""

    CHANNEL_CLASS = DirectRobustChannel
