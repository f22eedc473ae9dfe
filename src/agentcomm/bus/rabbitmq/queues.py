"""The queues and topic exchanges of one RabbitMQ bus: declared and deleted on a channel of
their own, and the options of the queues this bus declared remembered.

A refused declaration (PRECONDITION_FAILED) makes RabbitMQ close the channel it came on; on a
channel of its own it never fails the publishes in flight. Consumers re-declare their queue
with the remembered options after a reconnect, and dead-lettering needs the dead-letter queue.

Every durable queue the bus declares is of one type, `queue_type` (RABBITMQ_QUEUE_TYPE):
`classic`, declared without `x-queue-type` as before the setting existed, or `quorum`,
replicated over a RabbitMQ cluster's nodes. Everything in `QueueOptions` works on both as of
RabbitMQ 3.10 (message TTL, dead-lettering, queue expiry); what quorum queues refuse —
exclusive, auto-delete or non-durable queues, `x-max-priority` — the bus does not ask of its
durable queues (its broadcast listeners' own queues are exclusive, so always classic). RabbitMQ
keeps a queue's type for as long as the queue lives, so a declaration of the other type is
refused; that refusal names RABBITMQ_QUEUE_TYPE.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Literal, get_args

from aio_pika.abc import AbstractRobustChannel, ExchangeType, FieldValue
from aio_pika.exceptions import (
    ChannelInvalidStateError,
    ChannelNotFoundEntity,
    ChannelPreconditionFailed,
)

from agentcomm.bus.base import BusClosed, BusError, BusUnavailable, QueueOptions, QueueStats
from agentcomm.bus.rabbitmq.wire.base import TRANSPORT_ERRORS

# Pause before trying a declaration again on a channel that was closed under it.
RETRY_PAUSE = 0.05

QueueType = Literal["classic", "quorum"]
QUEUE_TYPES: tuple[str, ...] = get_args(QueueType)


class Queues:
    """Declarations and deletions, one at a time, on `channel` (None while disconnected).

    `unavailable(action, exc)` words the BusUnavailable for a failed call; `timeout` bounds
    each call, which otherwise waits for a reconnect; `queue_type` is the type of every queue
    declared."""

    def __init__(
        self,
        unavailable: Callable[[str, BaseException], BusUnavailable],
        timeout: float,
        queue_type: QueueType = "classic",
    ) -> None:
        if queue_type not in QUEUE_TYPES:
            raise ValueError(
                f"queue_type must be one of {', '.join(QUEUE_TYPES)}, got {queue_type!r}."
            )
        self.queue_type = queue_type
        self.channel: AbstractRobustChannel | None = None
        # Options of the queues declared through this bus, by name.
        self.options: dict[str, QueueOptions] = {}
        # The topic exchanges declared through this bus (durable: once is enough).
        self.exchanges: set[str] = set()
        self._unavailable = unavailable
        self._timeout = timeout
        # They share one channel; a refused one closes it, so they take turns rather than fail
        # each other.
        self._lock = asyncio.Lock()

    def arguments(self, options: QueueOptions) -> dict[str, FieldValue]:
        """The declaration arguments of a queue with `options`, of this bus's queue type."""
        arguments = queue_arguments(options)
        if self.queue_type != "classic":
            # Classic stays without the argument: queues declared before RABBITMQ_QUEUE_TYPE
            # existed have none, and RabbitMQ compares it.
            arguments["x-queue-type"] = self.queue_type
        return arguments

    def refused(self, name: str, arguments: dict[str, FieldValue], exc: BaseException) -> BusError:
        """The error for a declaration of `name` RabbitMQ refused as inequivalent."""
        why = reply_text(exc)
        if "x-queue-type" in why:
            existing = _existing_type(why)
            return BusError(
                f"Queue {name!r} is a {existing} queue but RABBITMQ_QUEUE_TYPE={self.queue_type} "
                "asks for another type: a queue keeps its type, so delete it or use a new vhost "
                f"to switch, or set RABBITMQ_QUEUE_TYPE={existing}."
            )
        return BusError(
            f"Cannot declare queue {name!r} with arguments {arguments}: it already exists "
            f"with different ones (RabbitMQ: {why}). Declare it with the same options, or "
            "delete it first."
        )

    async def declare(self, name: str, options: QueueOptions) -> None:
        arguments = self.arguments(options)
        async with self._lock:
            try:
                async with asyncio.timeout(self._timeout):
                    # Not registered for re-declaration after a reconnect: queues are durable,
                    # and the consumer of an expiring queue re-declares it on its own channel.
                    await self._on_channel(
                        lambda channel: channel.declare_queue(
                            name, durable=True, arguments=arguments, robust=False
                        )
                    )
            except ChannelPreconditionFailed as exc:
                raise self.refused(name, arguments, exc) from exc
            except (TimeoutError, *TRANSPORT_ERRORS) as exc:
                raise self._unavailable(f"declare queue {name!r}", exc) from exc
        self.options[name] = options

    async def declare_exchange(self, name: str) -> None:
        """Declares the durable fanout exchange of a topic."""
        async with self._lock:
            try:
                async with asyncio.timeout(self._timeout):
                    await self._on_channel(
                        lambda channel: channel.declare_exchange(
                            name, ExchangeType.FANOUT, durable=True, robust=False
                        )
                    )
            except (TimeoutError, *TRANSPORT_ERRORS) as exc:
                raise self._unavailable(f"declare exchange {name!r}", exc) from exc
        self.exchanges.add(name)

    async def stats(self, name: str) -> QueueStats | None:
        """A passive declaration of `name`: its messages ready and its consumers. None when
        it does not exist (the refusal closes the shared channel, which reopens by itself) or
        RabbitMQ does not answer in time."""
        found: list[QueueStats] = []

        async def ask(channel: AbstractRobustChannel) -> None:
            queue = await channel.declare_queue(name, passive=True, robust=False)
            result = queue.declaration_result
            found.append(QueueStats(result.message_count or 0, result.consumer_count or 0))

        async with self._lock:
            try:
                async with asyncio.timeout(self._timeout):
                    await self._on_channel(ask)
            except (ChannelNotFoundEntity, TimeoutError, *TRANSPORT_ERRORS):
                return None
        return found[0] if found else None

    async def delete(self, name: str) -> None:
        async with self._lock:
            try:
                async with asyncio.timeout(self._timeout):
                    await self._on_channel(lambda channel: channel.queue_delete(name))
            except (TimeoutError, *TRANSPORT_ERRORS) as exc:
                raise self._unavailable(f"delete queue {name!r}", exc) from exc
        self.options.pop(name, None)

    async def _on_channel(
        self, operation: Callable[[AbstractRobustChannel], Awaitable[object]]
    ) -> None:
        channel = self.channel
        if channel is None:
            raise BusClosed("The bus is closed.")
        while True:
            # A refused declaration closes this channel and it reopens by itself; until it
            # has, calls fail before reaching the broker, and declarations and deletions are
            # idempotent, so they are simply tried again (the caller's timeout bounds it).
            await channel.ready()
            if not channel.is_closed:
                try:
                    await operation(channel)
                    return
                except ChannelInvalidStateError:
                    pass
            await asyncio.sleep(RETRY_PAUSE)


def topic_exchange(topic: str) -> str:
    """The fanout exchange a topic's broadcasts go through."""
    return f"agentcomm.{topic}"


def queue_arguments(options: QueueOptions) -> dict[str, FieldValue]:
    arguments: dict[str, FieldValue] = {}
    if options.message_ttl_ms is not None:
        arguments["x-message-ttl"] = options.message_ttl_ms
    if options.dead_letter_queue is not None:
        # The default exchange routes by queue name, so this names the dead-letter queue.
        arguments["x-dead-letter-exchange"] = ""
        arguments["x-dead-letter-routing-key"] = options.dead_letter_queue
    if options.expires_ms is not None:
        arguments["x-expires"] = options.expires_ms
    return arguments


def reply_text(exc: BaseException) -> str:
    """RabbitMQ's reason for refusing a call."""
    return str(exc) or type(exc).__name__


def _existing_type(why: str) -> str:
    """The type RabbitMQ's refusal says a queue has ("... but current is none" for a queue
    declared without x-queue-type: classic)."""
    if why.rstrip().endswith("current is none"):
        return "classic"
    found = re.search(r"current is the value '([^']+)'", why)
    return found.group(1) if found else "different"


def check_prefetch(prefetch: int) -> None:
    if not 1 <= prefetch <= 65535:
        raise ValueError(f"prefetch must be between 1 and 65535, got {prefetch}.")
