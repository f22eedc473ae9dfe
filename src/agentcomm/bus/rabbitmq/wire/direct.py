"""aio-pika's robust connection, channel and queue, made to consume through the fast path.

aio-pika hands each delivery to a consumer as an IncomingMessage (which copies every property
into a new object) from a task of its own, on top of the task aiormq already runs the consumer
callback in. The framed wire consumes through `DirectRobustQueue` instead: its consumers'
deliveries are decoded by the link's fast path (see `fastpath`) and handed to a `RawConsumer`
as the slim `InboundMessage`, synchronously and in delivery order. (Should a delivery reach
aiormq after all, its consumer callback takes it the same way.)

Everything that makes the consumer robust stays aio-pika's: the consumer is registered with
the queue like any other, so a reconnect re-declares the queue and consumes it again, and a
consumer RabbitMQ cancels makes the connection recover.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aio_pika.abc import AbstractIncomingMessage, ConsumerTag, TimeoutType
from aio_pika.robust_channel import RobustChannel
from aio_pika.robust_queue import RobustQueue
from aiormq.abc import AbstractChannel
from pamqp.common import Arguments

from agentcomm.bus.rabbitmq.wire.fastpath import FastPath
from agentcomm.bus.rabbitmq.wire.gathering import GatheringRobustConnection
from agentcomm.bus.rabbitmq.wire.inbound import RawConsumer


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
        tag = consumer_tag or f"ctag{channel.number}.{uuid.uuid4().hex}"
        fast_path = fast_path_of(self.channel, channel)
        # Registered before RabbitMQ hears of the consumer, so that its first delivery is
        # already the fast path's.
        if fast_path is not None:
            fast_path.consume(channel, tag, callback.deliver)
        try:
            result = await channel.basic_consume(
                queue=self.name,
                consumer_callback=callback.on_delivery,
                exclusive=exclusive,
                no_ack=no_ack,
                arguments=arguments,
                consumer_tag=tag,
                timeout=timeout,
            )
        except BaseException:
            if fast_path is not None:
                fast_path.forget_consumer(channel, tag)
            raise
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

    def fast_path_for(self, channel: AbstractChannel) -> FastPath | None:
        """The fast path of the link `channel` (this channel's aiormq channel) is on."""
        connection = self._connection
        if isinstance(connection, GatheringRobustConnection):
            return connection.fast_path_for(channel)
        return None


def fast_path_of(robust: object, channel: AbstractChannel) -> FastPath | None:
    """The fast path that reads and writes for `channel`, the current aiormq channel of the
    aio-pika channel `robust`; None unless `robust` is one of the bus's direct channels."""
    return robust.fast_path_for(channel) if isinstance(robust, DirectRobustChannel) else None


class BusConnection(GatheringRobustConnection):
    """The RabbitMQ bus's connection: gathered writes, and queues that consume directly."""

    CHANNEL_CLASS = DirectRobustChannel
