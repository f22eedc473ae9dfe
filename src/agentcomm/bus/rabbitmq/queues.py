"""The queues of one RabbitMQ bus: declared and deleted on a channel of their own, and the
options of those this bus declared remembered.

A refused declaration (PRECONDITION_FAILED) makes RabbitMQ close the channel it came on; on a
channel of its own it never fails the publishes in flight. Consumers re-declare their queue
with the remembered options after a reconnect, and dead-lettering needs the dead-letter queue.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aio_pika.abc import AbstractRobustChannel, FieldValue
from aio_pika.exceptions import ChannelInvalidStateError, ChannelPreconditionFailed

from agentcomm.bus.base import BusClosed, BusError, BusUnavailable, QueueOptions
from agentcomm.bus.rabbitmq.wire.base import TRANSPORT_ERRORS

# Pause before trying a declaration again on a channel that was closed under it.
RETRY_PAUSE = 0.05


class Queues:
    """Declarations and deletions, one at a time, on `channel` (None while disconnected).

    `unavailable(action, exc)` words the BusUnavailable for a failed call; `timeout` bounds
    each call, which otherwise waits for a reconnect."""

    def __init__(
        self, unavailable: Callable[[str, BaseException], BusUnavailable], timeout: float
    ) -> None:
        self.channel: AbstractRobustChannel | None = None
        # Options of the queues declared through this bus, by name.
        self.options: dict[str, QueueOptions] = {}
        self._unavailable = unavailable
        self._timeout = timeout
        # They share one channel; a refused one closes it, so they take turns rather than fail
        # each other.
        self._lock = asyncio.Lock()

    async def declare(self, name: str, options: QueueOptions) -> None:
        arguments = queue_arguments(options)
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
                raise BusError(
                    f"Cannot declare queue {name!r} with arguments {arguments}: it already exists "
                    f"with different ones (RabbitMQ: {reply_text(exc)}). Declare it with the "
                    "same options, or delete it first."
                ) from exc
            except (TimeoutError, *TRANSPORT_ERRORS) as exc:
                raise self._unavailable(f"declare queue {name!r}", exc) from exc
        self.options[name] = options

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
