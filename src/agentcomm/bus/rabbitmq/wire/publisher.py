"""Publishes with confirms on one channel, written as frames by the link's fast path.

A publish is its Basic.Publish, content header and body frames in one write; the future it
returns is settled by RabbitMQ's Basic.Ack (or Nack, or a Basic.Return before it, for a
mandatory message no queue took), which the fast path reads off the link and hands to
`confirmed` and `returned`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiormq.abc import AbstractChannel
from aiormq.exceptions import ChannelInvalidStateError
from pamqp.commands import Basic

from agentcomm.bus.rabbitmq.wire.base import LinkLost, Refused, Returned
from agentcomm.bus.rabbitmq.wire.frames import (
    BASIC,
    BASIC_PUBLISH,
    CONTENT_HEAD,
    FRAME_BODY,
    FRAME_HEADER,
    FRAME_METHOD,
    FRAME_OVERHEAD,
    IDS,
    frame,
)


class Publisher:
    """Publishes with confirms on one channel that aiormq opened in confirm mode.

    Delivery tags count from one per channel (AMQP's confirm numbering); nothing else may
    publish on the channel, or the counts would disagree.
    """

    def __init__(
        self, write: Callable[[bytes], None], channel: AbstractChannel, frame_max: int
    ) -> None:
        self.channel = channel
        self.number: int = channel.number
        # Puts bytes on the link (its gathering writer, in order with aiormq's frames).
        self._write = write
        self._loop = asyncio.get_running_loop()
        self._last_tag = 0
        # Unconfirmed publishes in tag order: tag -> (future, message_id of a mandatory one).
        self._unconfirmed: dict[int, tuple[asyncio.Future[None], str | None]] = {}
        # message_id -> tag of the unconfirmed mandatory publish with that id: a Basic.Return
        # names its message only by its properties (the bus never has two such in flight).
        self._mandatory_ids: dict[str, int] = {}
        # Tags RabbitMQ returned, until their confirm arrives: tag -> why.
        self._returned: dict[int, str] = {}
        self._body_max = frame_max - FRAME_OVERHEAD if frame_max else 0
        # The Basic.Publish frames written so far, by (routing key, mandatory, exchange).
        self._method_frames: dict[tuple[str, bool, str], bytes] = {}
        self.closed = False

    @property
    def is_closed(self) -> bool:
        """Closed here (its channel or link is gone) or by aiormq."""
        return self.closed or self.channel.is_closed

    def publish(
        self,
        routing_key: str,
        body: bytes,
        properties: Basic.Properties,
        mandatory: bool,
        exchange: str = "",
    ) -> asyncio.Future[None]:
        """Writes the message to `exchange` (the default exchange unless named); the future
        settles with its confirm."""
        if self.is_closed:
            raise ChannelInvalidStateError(f"Channel {self.number} is closed.")
        if mandatory and not properties.message_id:
            # A Basic.Return names its message only by its properties: without an id, a
            # returned message could not be told apart and would pass for stored.
            raise ValueError("A mandatory publish needs a message_id.")
        method = self._method_frames.get((routing_key, mandatory, exchange))
        if method is None:
            method = self._method_frame(routing_key, mandatory, exchange)
        header = CONTENT_HEAD.pack(BASIC, 0, len(body)) + properties.marshal()
        number = self.number
        parts = [method, frame(FRAME_HEADER, number, header)]
        # (An empty body has no body frame; `range` needs a step above zero all the same.)
        step = self._body_max or max(len(body), 1)
        for start in range(0, len(body), step):
            parts.append(frame(FRAME_BODY, number, body[start : start + step]))
        self._last_tag += 1
        tag = self._last_tag
        future: asyncio.Future[None] = self._loop.create_future()
        message_id = properties.message_id if mandatory else None
        self._unconfirmed[tag] = (future, message_id)
        if message_id:
            self._mandatory_ids[message_id] = tag
        self._write(b"".join(parts))
        return future

    def _method_frame(self, routing_key: str, mandatory: bool, exchange: str) -> bytes:
        key = routing_key.encode()
        name = exchange.encode()
        payload = (
            IDS.pack(BASIC, BASIC_PUBLISH)
            + b"\x00\x00"  # reserved short
            + bytes((len(name),))
            + name
            + bytes((len(key),))
            + key
            + (b"\x01" if mandatory else b"\x00")
        )
        method = frame(FRAME_METHOD, self.number, payload)
        if len(self._method_frames) < 1024:
            self._method_frames[(routing_key, mandatory, exchange)] = method
        return method

    def confirmed(self, tag: int, multiple: bool, stored: bool) -> None:
        unconfirmed = self._unconfirmed
        if not multiple:
            entry = unconfirmed.pop(tag, None)
            if entry is not None:
                self._settle(tag, entry, stored)
            return
        while unconfirmed and (first := next(iter(unconfirmed))) <= tag:
            self._settle(first, unconfirmed.pop(first), stored)

    def returned(self, message_id: str | None, why: str) -> None:
        tag = self._mandatory_ids.get(message_id) if message_id else None
        if tag is not None:
            self._returned[tag] = why

    def _settle(
        self, tag: int, entry: tuple[asyncio.Future[None], str | None], stored: bool
    ) -> None:
        future, message_id = entry
        if message_id and self._mandatory_ids.get(message_id) == tag:
            del self._mandatory_ids[message_id]
        why = self._returned.pop(tag, None) if self._returned else None
        if future.done():
            return  # its publisher gave up waiting (a timeout, a cancel)
        if why is not None:
            future.set_exception(Returned(why))
        elif stored:
            future.set_result(None)
        else:
            future.set_exception(Refused("RabbitMQ did not store the message (Basic.Nack)."))

    def close(self, why: str) -> None:
        """Fails every unconfirmed publish: its channel or link is gone."""
        self.closed = True
        unconfirmed, self._unconfirmed = self._unconfirmed, {}
        self._mandatory_ids.clear()
        self._returned.clear()
        for future, _ in unconfirmed.values():
            if not future.done():
                future.set_exception(LinkLost(why))
