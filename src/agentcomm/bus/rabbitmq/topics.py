"""Broadcasts on the RabbitMQ bus: a durable fanout exchange per topic, `agentcomm.<topic>`,
published to on the publishing channel (confirmed, not persistent, not mandatory), and a
listener queue of each listener's own — exclusive, auto-delete, classic — bound to it.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Protocol

from aio_pika.abc import AbstractRobustChannel, AbstractRobustQueue, ExchangeType
from aiormq import spec

from agentcomm.bus.base import BusClosed, BusUnavailable, MessageHandler, check_topic
from agentcomm.bus.rabbitmq import consuming
from agentcomm.bus.rabbitmq.consuming import ConsumerHost
from agentcomm.bus.rabbitmq.deliveries import JSON_CONTENT_TYPE, TRANSIENT
from agentcomm.bus.rabbitmq.queues import check_prefetch, topic_exchange
from agentcomm.bus.rabbitmq.subscription import (
    ListenerSubscription,
)


class BroadcastHost(ConsumerHost, Protocol):
    """What broadcasting needs of the bus (the bus, without importing it)."""

    _closed: bool
    _publish_channel: AbstractRobustChannel | None
    _where: str

    async def _publish_message(
        self,
        queue: str,
        body: bytes,
        properties: spec.Basic.Properties,
        *,
        mandatory: bool,
        timeout: float,
        exchange: str = "",
    ) -> None: ...


async def broadcast(
    host: BroadcastHost,
    topic: str,
    body: bytes,
    *,
    message_id: str | None = None,
    timeout: float = 5.0,
) -> None:
    """Publishes to the topic's fanout exchange, `agentcomm.<topic>` (declared durable on
    first use), not persistent and not mandatory: a topic nobody listens to drops it."""
    exchange = topic_exchange(check_topic(topic))
    if host._closed:
        raise BusClosed("Cannot broadcast: the bus is closed.")
    if host._publish_channel is None:
        raise BusClosed("Cannot broadcast: the bus is not connected yet; call connect() first.")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    if exchange not in host._queues.exchanges:
        try:
            async with asyncio.timeout(timeout):
                await host._queues.declare_exchange(exchange)
        except TimeoutError as exc:
            raise BusUnavailable(
                f"Cannot broadcast on {topic!r}: RabbitMQ at {host._where} did not declare "
                f"its exchange within {timeout:g} s."
            ) from exc
    properties = spec.Basic.Properties(
        content_type=JSON_CONTENT_TYPE,
        delivery_mode=TRANSIENT,
        message_id=message_id or uuid.uuid4().hex,
    )
    await host._publish_message(
        "",
        body,
        properties,
        mandatory=False,
        timeout=max(deadline - loop.time(), 0.0),
        exchange=exchange,
    )


async def listen(
    host: BroadcastHost, topic: str, handler: MessageHandler, *, prefetch: int | None = None
) -> ListenerSubscription:
    """Listens on a channel of its own, through an exclusive, auto-delete classic queue
    bound to the topic's exchange.

    The queue is named by the bus (`agentcomm.<topic>.listener.<random>`) rather than by
    RabbitMQ: aio-pika restores a channel's queues, bindings and consumers after a
    reconnect under the names they had, and a server-made name (`amq.gen-…`) may not be
    declared by a client. Being exclusive, the queue goes with the connection, so what was
    broadcast while the connection was down is lost for this listener (`on_reconnect`)."""
    exchange = topic_exchange(check_topic(topic))
    host._ensure_open("listen")
    prefetch = host._prefetch_default if prefetch is None else prefetch
    check_prefetch(prefetch)
    name = f"{exchange}.listener.{uuid.uuid4().hex}"
    action = f"listen to {topic!r}"
    channel = host._new_channel(action)
    subscription = ListenerSubscription(host, topic, name, handler, channel)

    async def declare(channel: AbstractRobustChannel) -> AbstractRobustQueue:
        # Declared on this channel too, so that a reconnect declares it again before the
        # binding that needs it.
        await channel.declare_exchange(exchange, ExchangeType.FANOUT, durable=True)
        queue = await channel.declare_queue(
            name,
            exclusive=True,
            auto_delete=True,
            # Exclusive queues can only be classic, whatever RABBITMQ_QUEUE_TYPE says.
            arguments={"x-queue-type": "classic"},
        )
        await queue.bind(exchange, "")
        return queue

    await consuming.start(host, subscription, prefetch, action, declare)
    return subscription
