"""The plain wire (`RABBITMQ_FAST_PATH=0`): aio-pika as its documentation shows it.

Publishes are `aio_pika.Message`s through the default exchange of a channel with publisher
confirms, consumers are `Queue.consume` callbacks, acks are aiormq's `basic_ack`; no private
attribute of aio-pika or aiormq is touched. It is the way to run on an aio-pika or aiormq the
framed wire was not tested with, at about a third of the round trips (three times the CPU
per round trip on the `roundtrip` benchmark).

With more than one RabbitMQ node (RABBITMQ_HOSTS) the connection is `NodesRobustConnection`,
aio-pika's own with one more connection parameter (`nodes.py`), so that reconnecting moves on
to the next node; with one it is aio-pika's stock connection.

Two things differ from the framed wire, both aiormq's own behaviour: a publish waits for its
frames to be written (so it is held back while RabbitMQ does not read), but one that times out
while it waits may still be sent once the link drains; and the frames are written one by one
rather than gathered per loop turn.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractRobustChannel,
    AbstractRobustConnection,
    AbstractRobustQueue,
    ConsumerTag,
)
from aio_pika.exceptions import ChannelInvalidStateError, DeliveryError, PublishError
from aiormq.abc import AbstractChannel
from pamqp.commands import Basic

from agentcomm.bus.rabbitmq.nodes import Nodes, NodesRobustConnection, connect_to_nodes
from agentcomm.bus.rabbitmq.wire.acks import ChannelAcks
from agentcomm.bus.rabbitmq.wire.base import (
    RESEND_PAUSE,
    TRANSPORT_ERRORS,
    OnMessage,
    Refused,
    Returned,
)
from agentcomm.bus.rabbitmq.wire.inbound import RawConsumer


class PlainWire:
    """Publishes, consumes and acks through aio-pika's and aiormq's public API only."""

    async def connect(self, url: str, nodes: Nodes, **options: Any) -> AbstractRobustConnection:
        if len(nodes.nodes) == 1:
            # aio-pika's own connection, as its documentation shows it.
            connection: AbstractRobustConnection = await aio_pika.connect_robust(url, **options)
            return connection
        return await connect_to_nodes(NodesRobustConnection, url, nodes, **options)

    async def publish(
        self,
        channel: AbstractRobustChannel,
        routing_key: str,
        body: bytes,
        properties: Basic.Properties,
        mandatory: bool,
        exchange: str = "",
    ) -> None:
        message = _message(body, properties)
        while True:
            # Waits while the connection is being restored; the caller's timeout bounds it.
            await channel.ready()
            target = (
                await channel.get_exchange(exchange, ensure=False)
                if exchange
                else channel.default_exchange
            )
            try:
                await target.publish(message, routing_key, mandatory=mandatory)
                return
            except PublishError as exc:
                raise Returned(str(exc)) from exc
            except DeliveryError as exc:
                raise Refused("RabbitMQ did not store the message (Basic.Nack).") from exc
            except ChannelInvalidStateError:
                # The channel closed before the message was handed to it (aio-pika and aiormq
                # check before they write), so sending again cannot duplicate it.
                pass
            await asyncio.sleep(RESEND_PAUSE)

    async def consume(self, queue: AbstractRobustQueue, on_message: OnMessage) -> ConsumerTag:
        return await queue.consume(RawConsumer(on_message))

    def acks(
        self, channel: AbstractRobustChannel, underlay: AbstractChannel, queue: str
    ) -> ChannelAcks:
        return ChannelAcks(underlay, queue, TRANSPORT_ERRORS)


def _message(body: bytes, properties: Basic.Properties) -> aio_pika.Message:
    expiration = properties.expiration
    return aio_pika.Message(
        body,
        headers=properties.headers,
        content_type=properties.content_type,
        content_encoding=properties.content_encoding,
        delivery_mode=properties.delivery_mode,
        priority=properties.priority,
        correlation_id=properties.correlation_id,
        reply_to=properties.reply_to,
        # AMQP carries milliseconds as text; aio-pika takes a duration (and may round it
        # down by a millisecond on the way back).
        expiration=None if expiration is None else timedelta(milliseconds=int(expiration)),
        message_id=properties.message_id,
        timestamp=properties.timestamp,
        type=properties.message_type,
        user_id=properties.user_id,
        app_id=properties.app_id,
    )
