"""The default wire: the bus frames its own traffic on the link aio-pika and aiormq keep.

The hot path stays below aio-pika's wrappers, which cost more than the work itself: the
connection gathers the frames of one event-loop turn into one write (`gathering.py`), publishes
and their confirms, deliveries and acks are written and read by the link's fast path
(`fastpath.py`, `publisher.py`), deliveries reach the consumer as the fast path decodes them
(`direct.py`), and acks go out in runs (`acks.py`). Together that doubled the round trips a
bus process manages on RabbitMQ; docs/benchmarks.md has the measurements.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aio_pika.abc import (
    AbstractRobustChannel,
    AbstractRobustConnection,
    AbstractRobustQueue,
    ConsumerTag,
)
from aiormq.abc import AbstractChannel
from aiormq.exceptions import ChannelInvalidStateError
from pamqp.commands import Basic

from agentcomm.bus.rabbitmq.nodes import Nodes, connect_to_nodes
from agentcomm.bus.rabbitmq.wire.acks import ChannelAcks
from agentcomm.bus.rabbitmq.wire.base import RESEND_PAUSE, TRANSPORT_ERRORS, OnMessage
from agentcomm.bus.rabbitmq.wire.direct import BusConnection, fast_path_of
from agentcomm.bus.rabbitmq.wire.frames import frame_max_of
from agentcomm.bus.rabbitmq.wire.inbound import RawConsumer
from agentcomm.bus.rabbitmq.wire.publisher import Publisher


class FramedWire:
    """Publishes, consumes and acks through the fast path of the bus's own connection."""

    def __init__(self) -> None:
        self._connection: BusConnection | None = None
        # Publishes on the publish channel's current aiormq channel (a new one after a reconnect).
        self._publisher: Publisher | None = None

    async def connect(self, url: str, nodes: Nodes, **options: Any) -> AbstractRobustConnection:
        connection = await connect_to_nodes(BusConnection, url, nodes, **options)
        self._connection = connection
        return connection

    async def publish(
        self,
        channel: AbstractRobustChannel,
        routing_key: str,
        body: bytes,
        properties: Basic.Properties,
        mandatory: bool,
        exchange: str = "",
    ) -> None:
        # Through the link's fast path, not aio-pika's Message and Exchange wrappers or
        # aiormq's publish, whose machinery showed in every publish.
        while True:
            # Waits while the connection is being restored; the caller's timeout bounds it.
            await channel.ready()
            # The publish below hands the frames over without waiting for them to be written,
            # so nothing else holds a publisher back while RabbitMQ does not read (an alarm, a
            # stalled link): wait until the link takes data, still inside the caller's
            # timeout, so that a publish that times out was never sent and the memory held
            # stays bounded. (No await at all while the link is writable.)
            writable = self._writable()
            if writable is not None and not writable.is_set():
                await writable.wait()
                continue
            publisher = self._publisher
            if publisher is None or publisher.is_closed:
                publisher = self._publisher = await self._open_publisher(channel)
            if publisher is not None:
                try:
                    confirmed = publisher.publish(
                        routing_key, body, properties, mandatory, exchange
                    )
                except ChannelInvalidStateError:
                    # Raised before anything was written, so sending again cannot duplicate.
                    pass
                else:
                    await confirmed
                    return
            await asyncio.sleep(RESEND_PAUSE)

    async def consume(self, queue: AbstractRobustQueue, on_message: OnMessage) -> ConsumerTag:
        # `queue` is a DirectRobustQueue (the connection's channels make them), which registers
        # the consumer with the link's fast path before RabbitMQ hears of it.
        return await queue.consume(RawConsumer(on_message))

    def acks(
        self, channel: AbstractRobustChannel, underlay: AbstractChannel, queue: str
    ) -> ChannelAcks:
        return ChannelAcks(underlay, queue, TRANSPORT_ERRORS, fast_path_of(channel, underlay))

    async def _open_publisher(self, channel: AbstractRobustChannel) -> Publisher | None:
        """A publisher on the publish channel's current aiormq channel; None while it is down."""
        underlay = await channel.get_underlay_channel()
        if underlay.is_closed:
            return None
        fast_path = fast_path_of(channel, underlay)
        if fast_path is None:
            return None  # a channel of a link that has just been replaced
        try:
            return fast_path.publisher(underlay, frame_max_of(underlay))
        except ChannelInvalidStateError:
            return None

    def _writable(self) -> asyncio.Event | None:
        connection = self._connection
        return None if connection is None else connection.writable()
