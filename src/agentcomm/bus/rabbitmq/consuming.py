"""Consumers on the RabbitMQ bus: each on a channel of its own with its own prefetch, its queue
declared on that channel (so that a reconnect declares it again before consuming), and every
step of the set-up undone when one fails.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

from aio_pika.abc import AbstractRobustChannel, AbstractRobustQueue
from aio_pika.exceptions import ChannelNotFoundEntity, ChannelPreconditionFailed

from agentcomm.bus.base import BusUnavailable, MessageHandler, QueueOptions, Unroutable
from agentcomm.bus.rabbitmq.queues import Queues, check_prefetch
from agentcomm.bus.rabbitmq.subscription import Owner, RabbitSubscription
from agentcomm.bus.rabbitmq.wire.base import TRANSPORT_ERRORS


class ConsumerHost(Owner, Protocol):
    """What starting a consumer needs of the bus (the bus, without importing it)."""

    # Bound on declare/delete/consume set-up calls, which otherwise wait for a reconnect.
    OPERATION_TIMEOUT: float
    _queues: Queues
    _prefetch_default: int
    _subscriptions: set[RabbitSubscription]

    def _ensure_open(self, action: str) -> None: ...

    def _new_channel(self, action: str) -> AbstractRobustChannel: ...

    def _unavailable(self, action: str, exc: BaseException) -> BusUnavailable: ...


async def consume(
    host: ConsumerHost,
    queue: str,
    handler: MessageHandler,
    *,
    prefetch: int | None,
    concurrency: int,
    max_deliveries: int,
    on_dead_letter: MessageHandler | None,
) -> RabbitSubscription:
    """Consumes `queue` on a channel of its own; `prefetch` None means the bus default."""
    host._ensure_open("consume")
    prefetch = host._prefetch_default if prefetch is None else prefetch
    check_prefetch(prefetch)
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}.")
    if max_deliveries < 1:
        raise ValueError(f"max_deliveries must be at least 1, got {max_deliveries}.")
    options = host._queues.options.get(queue)
    action = f"consume {queue!r}"
    channel = host._new_channel(action)
    subscription = RabbitSubscription(
        host, queue, handler, channel, concurrency, max_deliveries, on_dead_letter
    )

    async def declare(channel: AbstractRobustChannel) -> AbstractRobustQueue:
        if options is None:
            # Declared elsewhere: only check that it exists, its arguments are unknown.
            return await channel.declare_queue(queue, passive=True)
        # With the arguments, so that a reconnect re-creates a queue that expired while
        # this consumer was away.
        return await channel.declare_queue(
            queue, durable=True, arguments=host._queues.arguments(options)
        )

    try:
        await start(host, subscription, prefetch, action, declare)
    except ChannelNotFoundEntity as exc:
        raise Unroutable(f"Cannot consume: no queue named {queue!r}.") from exc
    except ChannelPreconditionFailed as exc:
        arguments = host._queues.arguments(options or QueueOptions())
        raise host._queues.refused(queue, arguments, exc) from exc
    return subscription


async def start(
    host: ConsumerHost,
    subscription: RabbitSubscription,
    prefetch: int,
    action: str,
    declare: Callable[[AbstractRobustChannel], Awaitable[AbstractRobustQueue]],
) -> None:
    """Opens the subscription's channel, declares its queue and starts consuming; undoes it
    all when a step fails. A queue RabbitMQ does not know or refuses to declare raises
    aio-pika's own error, for the caller to word."""
    channel = subscription.channel
    try:
        async with asyncio.timeout(host.OPERATION_TIMEOUT):
            await channel.initialize()
            await channel.set_qos(prefetch_count=prefetch)
            await subscription.start(await declare(channel), prefetch)
    except BaseException as exc:
        await subscription.abandon()
        if isinstance(exc, (ChannelNotFoundEntity, ChannelPreconditionFailed)):
            raise
        if isinstance(exc, (TimeoutError, *TRANSPORT_ERRORS)):
            raise host._unavailable(action, exc) from exc
        raise
    host._subscriptions.add(subscription)
