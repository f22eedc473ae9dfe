"""Bounded redelivery on RabbitMQ: what `bus.base.Redelivery` decides, carried out with copies.

Classic queues do not count deliveries, so when a handler raises, the bus publishes a copy of
the message carrying an attempt counter (header `agentcomm-attempt`) to the tail of the same
queue, waits for the broker to confirm it, and only then acks the original. A message whose
counter reached `max_deliveries` goes to the queue's dead-letter queue instead (or is dropped
with a warning when the queue has none), after the consumer's `on_dead_letter` saw it. A copy
gets the queue's message TTL afresh.

A message RabbitMQ hands out again because its consumer never settled it (the process died,
the connection broke) may be one that kills its consumer. Such a "suspect" is charged an
attempt right before it is handled again: a counted copy goes to the tail and the original is
acked, then, once RabbitMQ has taken the ack, the handler runs. If the consumer dies again, the
counted copy comes back; if the handler finishes, the copy comes back as a duplicate, which
every consumer here recognises by its message_id. Suspects of one consumer are handled one at
a time (see `subscription.py`), so that a crash charges only the one that was running, not
every message that happened to be prefetched with it; and a suspect that was handled after it
came back unsettled, and comes back again, was caught in another message's crash and goes on
once uncharged.

Quorum queues work the same way. They count deliveries themselves (`x-delivery-count`) and
could drop or dead-letter a message past a limit (`x-delivery-limit`), but they count every
message a dead consumer held, the innocent with the guilty, and a message leaving by that
limit is dead-lettered by RabbitMQ without the consumer's `on_dead_letter` hearing of it; so
the bus sets no delivery limit and keeps its own count on every queue type.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Protocol

from aio_pika.abc import HeadersType
from aiormq import spec

from agentcomm.bus.base import (
    BusError,
    MessageHandler,
    QueueOptions,
    Unroutable,
    Verdict,
    notify_dead_letter,
)
from agentcomm.bus.rabbitmq.deliveries import (
    ATTEMPT_HEADER,
    DEAD_LETTERED_FROM_HEADER,
    DELIVERY_COUNT_HEADER,
    copy_properties,
    delivery_of,
    settle,
)
from agentcomm.bus.rabbitmq.wire.inbound import InboundMessage

# The name operators filter on; it was the module's own name before the bus became a package.
log = logging.getLogger("agentcomm.bus.rabbitmq")


class Publish(Protocol):
    async def __call__(
        self,
        queue: str,
        body: bytes,
        properties: spec.Basic.Properties,
        *,
        mandatory: bool,
        timeout: float,
    ) -> None:
        """Publishes and waits for the confirm; raises a BusError otherwise."""


class Redeliveries:
    """Settles the deliveries whose handler raised, as their `Verdict` says.

    `publish` is the bus's confirmed publish; `queue_options` the options of the queues the
    bus declared (a dead-letter queue is known only for those)."""

    def __init__(
        self,
        publish: Publish,
        queue_options: Mapping[str, QueueOptions],
        *,
        republish_timeout: float,
        give_back_timeout: float,
    ) -> None:
        self._publish = publish
        self._queue_options = queue_options
        self._republish_timeout = republish_timeout
        self._give_back_timeout = give_back_timeout

    async def carry_out(
        self,
        verdict: Verdict,
        queue: str,
        message: InboundMessage,
        attempt: int,
        on_dead_letter: MessageHandler | None,
    ) -> bool:
        """Settles `message` as `verdict` says; True when a counted copy is in the queue."""
        if verdict is Verdict.RETRY:
            return await self.retry_later(queue, message, attempt)
        if verdict is Verdict.DEAD_LETTER:
            await self.dead_letter(queue, message, attempt, on_dead_letter)
        elif verdict is Verdict.UNTOUCHED:
            await self.give_back(queue, message)
        else:
            # The bus failed, or the handler was cut off: back through the broker as it was.
            # (It comes back flagged redelivered: a cut-off one is charged an attempt then, as
            # a suspect; one the bus failed under goes on uncharged, see subscription.py.)
            await settle(message.nack(requeue=True), message, queue)
        return False

    async def retry_later(self, queue: str, message: InboundMessage, attempt: int) -> bool:
        """A counted copy at the tail, then the original acked; True once that is done."""
        headers: HeadersType = dict(message.headers or {})
        headers[ATTEMPT_HEADER] = attempt + 1
        try:
            # Confirmed first, acked after: a crash in between duplicates, never loses.
            await self._copy(message, queue, headers, self._republish_timeout)
        except BusError as exc:
            log.warning(
                "Could not requeue message %s on %s for attempt %d (%s); the broker gets it "
                "back uncounted",
                message.message_id,
                queue,
                attempt + 1,
                exc,
            )
            await settle(message.nack(requeue=True), message, queue)
            return False
        await settle(message.ack(), message, queue)
        return True

    async def give_back(self, queue: str, message: InboundMessage) -> None:
        """Puts a message no handler started on back as it was: an uncounted copy at the tail
        (so that it does not come back looking unsettled), then the original is acked."""
        try:
            await self._copy(message, queue, dict(message.headers or {}), self._give_back_timeout)
        except BusError as exc:
            log.info("Could not give back message %s on %s (%s)", message.message_id, queue, exc)
            await settle(message.nack(requeue=True), message, queue)
            return
        await settle(message.ack(), message, queue)

    async def dead_letter(
        self,
        queue: str,
        message: InboundMessage,
        attempt: int,
        on_dead_letter: MessageHandler | None,
    ) -> None:
        """A message out of attempts leaves `queue`, after `on_dead_letter` saw it."""
        if on_dead_letter is not None:
            await notify_dead_letter(on_dead_letter, delivery_of(queue, message, attempt))
        options = self._queue_options.get(queue)
        if options is None:
            # Declared by someone else: the broker applies the queue's own dead-letter
            # arguments, if it has any, when the message is rejected.
            log.warning(
                "Message %s left %s after %d failed deliveries (rejected: dead-lettered by "
                "RabbitMQ if the queue has a dead-letter exchange, else dropped)",
                message.message_id,
                queue,
                attempt,
            )
            await settle(message.reject(requeue=False), message, queue)
            return
        target = options.dead_letter_queue
        if target is None:
            log.warning(
                "Message %s dropped from %s after %d failed deliveries (the queue has no "
                "dead-letter queue)",
                message.message_id,
                queue,
                attempt,
            )
            await settle(message.ack(), message, queue)
            return
        headers: HeadersType = {
            key: value for key, value in (message.headers or {}).items() if key != ATTEMPT_HEADER
        }
        headers[DEAD_LETTERED_FROM_HEADER] = queue
        try:
            await self._copy(message, target, headers, self._republish_timeout)
        except Unroutable:
            log.warning(
                "Message %s dropped from %s after %d failed deliveries (its dead-letter queue "
                "%s does not exist)",
                message.message_id,
                queue,
                attempt,
                target,
            )
        except BusError as exc:
            log.warning(
                "Could not dead-letter message %s from %s to %s (%s); the broker gets it back",
                message.message_id,
                queue,
                target,
                exc,
            )
            await settle(message.nack(requeue=True), message, queue)
            return
        else:
            log.warning(
                "Message %s moved from %s to %s after %d failed deliveries",
                message.message_id,
                queue,
                target,
                attempt,
            )
        await settle(message.ack(), message, queue)

    async def _copy(
        self, message: InboundMessage, queue: str, headers: HeadersType, timeout: float
    ) -> None:
        """Publishes a copy of `message` with `headers` to `queue`, confirmed."""
        # The count belongs to the delivery copied, not to the copy: a quorum queue sets it
        # afresh, a classic one would carry a stale number on.
        headers.pop(DELIVERY_COUNT_HEADER, None)
        await self._publish(
            queue,
            message.body,
            copy_properties(message, headers),
            mandatory=True,
            timeout=timeout,
        )
