"""The one seam between the RabbitMQ bus and the AMQP link: publish with confirm, consume
deliveries, ack them.

Two wires implement it:

- `FramedWire` (`framed.py`, the default): the bus frames the traffic itself — publishes and
  their confirms, deliveries, acks — on the link aio-pika and aiormq keep, and the frames of one
  event-loop turn leave in one write. It subclasses aio-pika's robust connection, channel and
  queue and relies on some of their private parts (checked by tests/unit/test_bus_wire_parts.py).
- `PlainWire` (`plain.py`, `RABBITMQ_FAST_PATH=0`): aio-pika as documented — `Exchange.publish`
  on a channel with publisher confirms, `Queue.consume` — and no private attribute of aio-pika
  or aiormq. Slower, and the way to keep running on a release the framed wire does not know.

Everything else — connection and channel set-up, declarations, consumer registration,
reconnection, heartbeats — stays aio-pika's on either wire, and so does the bus's own logic
on top (redelivery, acks in runs, suspects).

Exceptions `Wire.publish` raises besides cancellation:

    Returned            RabbitMQ returned a mandatory message: no queue took it
    Refused             RabbitMQ answered Basic.Nack: it did not store the message
    TRANSPORT_ERRORS    the link or the channel broke before the confirm (aiormq's errors,
    └── LinkLost        ConnectionError, OSError; LinkLost is the framed wire's own)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from aio_pika.abc import (
    AbstractRobustChannel,
    AbstractRobustConnection,
    AbstractRobustQueue,
    ConsumerTag,
)
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError
from aiormq.abc import AbstractChannel
from pamqp.commands import Basic

from agentcomm.bus.rabbitmq.nodes import Nodes
from agentcomm.bus.rabbitmq.wire.acks import ChannelAcks
from agentcomm.bus.rabbitmq.wire.inbound import InboundMessage


class Returned(Exception):
    """RabbitMQ returned a mandatory message: no queue took it."""


class Refused(Exception):
    """RabbitMQ answered a publish with Basic.Nack: it did not store the message."""


class LinkLost(ConnectionError):
    """The link, or the channel, closed before RabbitMQ confirmed the message."""


# Errors that mean "the connection or channel is not usable right now".
TRANSPORT_ERRORS = (AMQPError, ChannelInvalidStateError, ConnectionError, OSError)

# Pause before trying a publish again on a channel that closed before the message was sent.
RESEND_PAUSE = 0.05

# Takes one delivery; called synchronously, once per delivery, in delivery order.
OnMessage = Callable[[InboundMessage], None]


class Wire(Protocol):
    """How one bus's messages get onto its AMQP link and off it (one wire per bus)."""

    async def connect(self, url: str, nodes: Nodes, **options: Any) -> AbstractRobustConnection:
        """Opens the bus's robust connection to one of `nodes`, and every reconnection to the
        next that takes it (`options` as for aio_pika.connect_robust; the URL gives the
        credentials and the vhost)."""

    async def publish(
        self,
        channel: AbstractRobustChannel,
        routing_key: str,
        body: bytes,
        properties: Basic.Properties,
        mandatory: bool,
        exchange: str = "",
    ) -> None:
        """Publishes to `exchange` (the default exchange: straight to the queue named
        `routing_key`) and returns once RabbitMQ confirmed the message.

        `channel` is the bus's publishing channel (publisher confirms on, used for nothing
        else). Waits while the connection is being restored; the caller's timeout bounds it."""

    async def consume(self, queue: AbstractRobustQueue, on_message: OnMessage) -> ConsumerTag:
        """Hands every delivery of `queue` to `on_message`, also after a reconnect."""

    def acks(
        self, channel: AbstractRobustChannel, underlay: AbstractChannel, queue: str
    ) -> ChannelAcks:
        """The acks of the deliveries on `underlay`, the current aiormq channel of `channel`
        (a new one after a reconnect)."""
