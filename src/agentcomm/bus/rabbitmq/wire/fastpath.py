"""The bus's busiest AMQP frames, read and written here rather than by aiormq.

Per message a bus process publishes once and takes one delivery. Through aiormq each of those
costs a trip through its machinery: every incoming frame is read with two awaits, decoded into
an object and queued to a per-channel reader task; every delivery gets a task; every publish
takes the channel's lock, a timeout scope, a future store entry and a hop through the writer
task's queue. On a two-core machine that was about 40 % of each bus process's CPU time.

So the few frames that carry the traffic are handled here, on the link's own bytes:
- `Publisher.publish` (`publisher.py`) writes Basic.Publish, its content header and body
  frames in one write, and returns a future that RabbitMQ's Basic.Ack (or Nack, or a
  Basic.Return before it, for a mandatory message no queue took) settles;
- Basic.Deliver with its content, for consumers registered here, is decoded and handed to the
  consumer synchronously, in delivery order;
- acks of deliveries are written directly (`FastPath.ack`).

Everything else — the handshake, channel and queue set-up, consumer registration, cancels,
closes, heartbeats, flow control — still goes through aiormq untouched: the bytes of every frame
this module does not take are passed on to aiormq's reader as they came. Channels, tags and
reconnection stay aio-pika's and aiormq's; a link only knows the channel numbers registered on
it, and everything registered dies with the link.

aiormq takes a link for dead when it has read no frame for a few heartbeat intervals; while
this module takes every frame, it passes aiormq a heartbeat frame now and then (RabbitMQ sends
none while it has traffic to send).
"""

from __future__ import annotations

import asyncio
import logging
import struct
import weakref
from collections.abc import Callable

from aiormq.abc import AbstractChannel
from aiormq.exceptions import ChannelInvalidStateError
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from agentcomm.bus.rabbitmq.wire.frames import (
    ACK,
    BASIC,
    BASIC_ACK,
    BASIC_DELIVER,
    BASIC_NACK,
    BASIC_RETURN,
    CHANNEL,
    CHANNEL_CLOSE,
    CHANNEL_CLOSE_OK,
    FRAME_BODY,
    FRAME_END,
    FRAME_HEAD,
    FRAME_HEAD_SIZE,
    FRAME_HEADER,
    FRAME_METHOD,
    FRAME_OVERHEAD,
    HEARTBEAT,
    IDS,
    TAG_AND_BITS,
)
from agentcomm.bus.rabbitmq.wire.publisher import Publisher

log = logging.getLogger(__name__)

# Seconds between the heartbeat frames passed to aiormq while this module takes every frame.
_KEEPALIVE_INTERVAL = 1.0

# A consumer's callback: (channel, delivery_tag, redelivered, properties, body) of one delivery.
DeliveryCallback = Callable[[AbstractChannel, int, bool, Basic.Properties, bytes], None]


class _Content:
    """A Basic.Deliver or Basic.Return taken here, while its header and body arrive."""

    __slots__ = ("body_size", "callback", "delivery_tag", "parts", "properties", "redelivered")

    def __init__(self, callback: Callable[[_Content], None]) -> None:
        self.callback = callback
        self.delivery_tag = 0
        self.redelivered = False
        self.properties: Basic.Properties | None = None
        self.body_size = 0
        self.parts: list[bytes] = []


class FastPath:
    """One AMQP link's hot frames. `received` gets every byte read; it passes on the rest.

    `write` puts bytes on the link (the gathering writer, in order with aiormq's frames).
    `forward` hands bytes to aiormq's reader.
    """

    def __init__(self, write: Callable[[bytes], None], forward: Callable[[bytes], None]) -> None:
        self.write = write
        self._forward = forward
        self._loop = asyncio.get_running_loop()
        self._pending = b""
        self._started = False
        # Set when the bytes stop looking like AMQP frames: from then on all goes to aiormq,
        # which reports the broken stream its own way.
        self._passthrough = False
        self._lost = False
        self._last_forward = self._loop.time()
        self._frame_max = 0
        self._publishers: dict[int, Publisher] = {}
        self._consumers: dict[tuple[int, str], tuple[AbstractChannel, DeliveryCallback]] = {}
        # Channel numbers with a publisher or a consumer: the only ones whose frames are read.
        self._watched: dict[int, int] = {}
        # Channels RabbitMQ or aiormq closed, which aiormq may not have marked closed yet.
        self._gone: weakref.WeakSet[AbstractChannel] = weakref.WeakSet()
        # Per channel: the content being received for a method taken here. (Header and body
        # frames of any other method are passed on with it.)
        self._taking: dict[int, _Content] = {}

    # -- registration -------------------------------------------------------------------------

    def publisher(self, channel: AbstractChannel, frame_max: int) -> Publisher:
        """The publisher on `channel` (open, in confirm mode, used for nothing else).

        Asked again for the same channel, it is the same publisher: RabbitMQ numbers the
        channel's confirms from one, once, so a second count would settle the wrong publishes."""
        if self._lost or channel in self._gone:
            raise ChannelInvalidStateError("The link to RabbitMQ is closed.")
        old = self._publishers.get(channel.number)
        if old is not None and old.channel is channel and not old.closed:
            return old
        publisher = Publisher(self.write, channel, frame_max)
        if old is not None:
            old.close("The channel was replaced.")
        else:
            self._watch(publisher.number)
        self._publishers[publisher.number] = publisher
        return publisher

    def consume(self, channel: AbstractChannel, consumer_tag: str, on: DeliveryCallback) -> None:
        """Hands the deliveries for `consumer_tag` on `channel` to `on`, in delivery order.

        Register before asking RabbitMQ to consume with that tag, so that no delivery comes
        before it."""
        if self._lost or channel in self._gone:
            raise ChannelInvalidStateError("The link to RabbitMQ is closed.")
        key = (channel.number, consumer_tag)
        if key not in self._consumers:
            self._watch(channel.number)
        self._consumers[key] = (channel, on)

    def forget_consumer(self, channel: AbstractChannel, consumer_tag: str) -> None:
        """Ends the registration of `consumer_tag` on `channel` (not one made for another
        channel that has the same number since)."""
        key = (channel.number, consumer_tag)
        registered = self._consumers.get(key)
        if registered is not None and registered[0] is channel:
            del self._consumers[key]
            self._unwatch(channel.number)

    def ack(self, channel: AbstractChannel, delivery_tag: int, multiple: bool) -> None:
        """Writes Basic.Ack for a delivery on `channel` (with `multiple`, every one up to it).

        Raises ChannelInvalidStateError, writing nothing, once the channel is closed, also
        when aiormq has not marked it closed yet: its number may soon be a new channel's."""
        if self._lost or channel.is_closed or channel in self._gone:
            raise ChannelInvalidStateError(f"Channel {channel.number} is closed.")
        self.write(
            ACK.pack(
                FRAME_METHOD,
                channel.number,
                13,  # the payload: class and method ids, delivery tag, the `multiple` bit
                BASIC,
                BASIC_ACK,
                delivery_tag,
                1 if multiple else 0,
                FRAME_END,
            )
        )

    def _watch(self, number: int) -> None:
        self._watched[number] = self._watched.get(number, 0) + 1

    def _unwatch(self, number: int) -> None:
        left = self._watched.get(number, 0) - 1
        if left > 0:
            self._watched[number] = left
        else:
            self._watched.pop(number, None)

    def _channel_gone(self, number: int, why: str) -> None:
        publisher = self._publishers.pop(number, None)
        if publisher is not None:
            self._gone.add(publisher.channel)
            publisher.close(why)
        for key in [key for key in self._consumers if key[0] == number]:
            self._gone.add(self._consumers.pop(key)[0])
        self._watched.pop(number, None)
        self._taking.pop(number, None)

    def lost(self) -> None:
        """The link closed: every unconfirmed publish fails, every registration ends."""
        self._lost = True
        for number in list(self._publishers):
            self._channel_gone(number, "The connection to RabbitMQ was lost.")
        self._consumers.clear()
        self._watched.clear()

    # -- reading --------------------------------------------------------------------------------

    def received(self, data: bytes) -> None:
        if self._passthrough:
            self._forward(data)
            return
        if not self._started:
            self._started = True
            if data.startswith(b"AMQP"):
                # RabbitMQ refused the protocol version: not frames, aiormq reports it.
                self._passthrough = True
                self._forward(data)
                return
        if self._pending:
            data = self._pending + data
            self._pending = b""
        size = len(data)
        position = 0
        # Start of the bytes not yet passed on to aiormq.
        passed_from = 0
        taken = False
        watched = self._watched
        while size - position >= FRAME_OVERHEAD:
            kind, channel, length = FRAME_HEAD.unpack_from(data, position)
            end = position + FRAME_HEAD_SIZE + length
            if end >= size:
                break
            if data[end] != FRAME_END:
                self._passthrough = True
                break
            if channel in watched and self._took(data, kind, channel, position, end):
                if passed_from < position:
                    self._forward(data[passed_from:position])
                    self._last_forward = self._loop.time()
                passed_from = end + 1
                taken = True
            position = end + 1
        if self._passthrough:
            self._forward(data[passed_from:])
            return
        if passed_from < position:
            self._forward(data[passed_from:position])
            self._last_forward = self._loop.time()
        elif taken and self._loop.time() - self._last_forward > _KEEPALIVE_INTERVAL:
            self._forward(HEARTBEAT)
            self._last_forward = self._loop.time()
        if position < size:
            self._pending = data[position:]

    def _took(self, data: bytes, kind: int, channel: int, start: int, end: int) -> bool:
        try:
            return self._take(data, kind, channel, start, end)
        except Exception:
            # A frame this module cannot read (RabbitMQ would not send one): aiormq gets it
            # and whatever of its content follows, and reports it its own way.
            log.exception("Could not read a frame on channel %d; passing it on", channel)
            self._taking.pop(channel, None)
            return False

    def _take(self, data: bytes, kind: int, channel: int, start: int, end: int) -> bool:
        """Handles one frame on a watched channel; False to pass it on to aiormq."""
        payload_at = start + FRAME_HEAD_SIZE
        if kind == FRAME_METHOD:
            class_id, method_id = IDS.unpack_from(data, payload_at)
            if class_id == BASIC:
                if method_id == BASIC_DELIVER:
                    return self._deliver_method(data, channel, payload_at + 4)
                if method_id in (BASIC_ACK, BASIC_NACK):
                    publisher = self._publishers.get(channel)
                    if publisher is None:
                        return False
                    tag, bits = TAG_AND_BITS.unpack_from(data, payload_at + 4)
                    publisher.confirmed(tag, bool(bits & 1), method_id == BASIC_ACK)
                    return True
                if method_id == BASIC_RETURN:
                    return self._return_method(data, channel, payload_at + 4)
            elif class_id == CHANNEL and method_id in (CHANNEL_CLOSE, CHANNEL_CLOSE_OK):
                # aiormq closes the channel; what was registered on it ends here.
                self._channel_gone(channel, f"Channel {channel} was closed.")
            return False
        if kind == FRAME_HEADER:
            content = self._taking.get(channel)
            if content is None:
                return False
            header = ContentHeader()
            header.unmarshal(data[payload_at:end])
            content.properties = header.properties
            content.body_size = header.body_size
            if not header.body_size:
                self._finish(channel, content)
            return True
        if kind == FRAME_BODY:
            content = self._taking.get(channel)
            if content is None:
                return False
            content.parts.append(data[payload_at:end])
            content.body_size -= end - payload_at
            if content.body_size <= 0:
                self._finish(channel, content)
            return True
        return False

    def _deliver_method(self, data: bytes, channel: int, at: int) -> bool:
        tag_length = data[at]
        consumer_tag = data[at + 1 : at + 1 + tag_length].decode()
        consumer = self._consumers.get((channel, consumer_tag))
        if consumer is None:
            return False
        delivery_tag, bits = TAG_AND_BITS.unpack_from(data, at + 1 + tag_length)
        amqp_channel, on_delivery = consumer

        def deliver(content: _Content) -> None:
            assert content.properties is not None
            body = content.parts[0] if len(content.parts) == 1 else b"".join(content.parts)
            try:
                on_delivery(
                    amqp_channel,
                    content.delivery_tag,
                    content.redelivered,
                    content.properties,
                    body,
                )
            except Exception:
                # The consumer's own failure: the delivery stays unacked and returns to the
                # queue with the channel; the link goes on.
                log.exception("A consumer failed to take delivery %d", content.delivery_tag)

        content = _Content(deliver)
        content.delivery_tag = delivery_tag
        content.redelivered = bool(bits & 1)
        self._taking[channel] = content
        return True

    def _return_method(self, data: bytes, channel: int, at: int) -> bool:
        publisher = self._publishers.get(channel)
        if publisher is None:
            return False
        reply_code = struct.unpack_from(">H", data, at)[0]
        text_length = data[at + 2]
        reply_text = data[at + 3 : at + 3 + text_length].decode(errors="replace")

        def returned(content: _Content) -> None:
            message_id = content.properties.message_id if content.properties else None
            publisher.returned(message_id, f"{reply_code} {reply_text}")

        self._taking[channel] = _Content(returned)
        return True

    def _finish(self, channel: int, content: _Content) -> None:
        del self._taking[channel]
        content.callback(content)
