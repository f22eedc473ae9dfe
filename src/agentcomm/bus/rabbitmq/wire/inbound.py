"""A delivery as the bus sees it, however it came off the link.

A bus process does nothing with a delivery but read its body and a few properties and settle
it later, so every wire hands its consumer the same slim `InboundMessage` through a
`RawConsumer`: decoded by the framed wire's fast path, by aiormq, or wrapped by aio-pika as an
IncomingMessage (the plain wire, and a consumer aio-pika restored on its own).
"""

from __future__ import annotations

from collections.abc import Callable

from aio_pika.abc import AbstractIncomingMessage
from aiormq.abc import AbstractChannel, DeliveredMessage
from aiormq.exceptions import ChannelInvalidStateError
from pamqp.commands import Basic
from pamqp.common import FieldTable


class InboundMessage:
    """One delivery: its body, the properties the bus reads, and how to settle it."""

    __slots__ = ("_channel", "body", "delivery_tag", "properties", "redelivered")

    def __init__(
        self,
        channel: AbstractChannel,
        delivery_tag: int | None,
        redelivered: bool,
        properties: Basic.Properties,
        body: bytes,
    ) -> None:
        self.body = body
        self.delivery_tag = delivery_tag
        self.redelivered = redelivered
        self.properties = properties
        self._channel = channel

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
    """A consumer callback that takes InboundMessages, however a delivery arrives.

    `on_message` is called synchronously, once per delivery, in delivery order."""

    def __init__(self, on_message: Callable[[InboundMessage], None]) -> None:
        self._on_message = on_message

    def deliver(
        self,
        channel: AbstractChannel,
        delivery_tag: int | None,
        redelivered: bool,
        properties: Basic.Properties,
        body: bytes,
    ) -> None:
        """A delivery decoded by the link's fast path (and, through the two below, by aiormq
        or aio-pika)."""
        self._on_message(InboundMessage(channel, delivery_tag, redelivered, properties, body))

    async def on_delivery(self, delivered: DeliveredMessage) -> None:
        """A delivery aiormq decoded (its task runs this)."""
        self.deliver(
            delivered.channel,
            delivered.delivery_tag,
            bool(delivered.redelivered),
            delivered.header.properties,
            delivered.body,
        )

    async def __call__(self, message: AbstractIncomingMessage) -> None:
        """A delivery aio-pika wrapped: every delivery on the plain wire. On the framed wire
        only a consumer RabbitMQ cancelled and aio-pika restored through its own
        `Queue.consume` is called this way, and its deliveries normally still reach the fast
        path (its tag stays registered there); any that do not are taken here."""
        self.deliver(
            message.channel,
            message.delivery_tag,
            bool(message.redelivered),
            message.properties,
            message.body,
        )
