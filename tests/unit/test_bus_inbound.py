"""RawConsumer: every way a delivery can reach it gives the bus the same InboundMessage."""

from __future__ import annotations

from typing import Any, cast

from aio_pika.message import IncomingMessage
from aiormq.abc import AbstractChannel, DeliveredMessage
from pamqp import commands
from pamqp.header import ContentHeader

from agentcomm.bus.rabbitmq.wire.inbound import InboundMessage, RawConsumer


class FakeChannel:
    number = 2
    is_closed = False


def _delivered(channel: Any) -> DeliveredMessage:
    properties = commands.Basic.Properties(
        message_id="m1", headers={"x-delivery-count": 1}, content_type="application/json"
    )
    return DeliveredMessage(
        delivery=commands.Basic.Deliver("ctag-1", 7, True, "", "q"),
        header=ContentHeader(0, 2, properties),
        body=b"{}",
        channel=channel,
    )


def _fields(message: InboundMessage) -> tuple[Any, ...]:
    return (
        message.channel,
        message.delivery_tag,
        message.redelivered,
        message.message_id,
        message.headers,
        message.properties.content_type,
        message.body,
    )


async def test_from_the_fast_path_from_aiormq_and_from_aio_pika_alike() -> None:
    channel = FakeChannel()
    taken: list[InboundMessage] = []
    consumer = RawConsumer(taken.append)
    delivered = _delivered(channel)
    consumer.deliver(
        cast(AbstractChannel, channel), 7, True, delivered.header.properties, delivered.body
    )
    await consumer.on_delivery(delivered)
    # How aio-pika hands over the deliveries of a consumer it restored after RabbitMQ
    # cancelled it.
    await consumer(IncomingMessage(delivered))
    expected = (channel, 7, True, "m1", {"x-delivery-count": 1}, "application/json", b"{}")
    assert [_fields(message) for message in taken] == [expected] * 3
