"""One delivery as the RabbitMQ bus reads it: its attempt, whether it came back unsettled, the
`Delivery` a handler gets, the properties of a copy, and settling it on a channel that may
be gone."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable

from aio_pika.abc import DeliveryMode, FieldValue, HeadersType
from aiormq import spec
from aiormq.abc import AbstractChannel
from aiormq.exceptions import ChannelInvalidStateError

from agentcomm.bus.base import Delivery
from agentcomm.bus.rabbitmq.wire.base import TRANSPORT_ERRORS
from agentcomm.bus.rabbitmq.wire.inbound import InboundMessage

# The name operators filter on; it was the module's own name before the bus became a package.
log = logging.getLogger("agentcomm.bus.rabbitmq")

ATTEMPT_HEADER = "agentcomm-attempt"
# A quorum queue's own count of a message's deliveries; it sets it on every delivery.
DELIVERY_COUNT_HEADER = "x-delivery-count"
DEAD_LETTERED_FROM_HEADER = "agentcomm-dead-lettered-from"
JSON_CONTENT_TYPE = "application/json"
PERSISTENT = int(DeliveryMode.PERSISTENT)
# Broadcasts: state sent again, not worth a disk write.
TRANSIENT = int(DeliveryMode.NOT_PERSISTENT)


def attempt_of(message: InboundMessage) -> int:
    """Which attempt this delivery is, by the bus's own count (the header its copies carry).

    Quorum queues count deliveries too (`x-delivery-count`), but the bus does not read that
    count: when a consumer dies, the queue counts every message the consumer had prefetched,
    not only the one that was being handled, so a few crashes would dead-letter messages that
    never failed. The bus charges only the suspect it runs (see `redelivery.py`), the same way
    on classic and quorum queues."""
    attempt = _as_int((message.headers or {}).get(ATTEMPT_HEADER)) or 1
    return max(attempt, 1)


def unsettled_before(message: InboundMessage) -> bool:
    """Handed out before and never settled: its consumer died with it, or gave it back.

    RabbitMQ flags such a delivery redelivered, on classic and on quorum queues."""
    return bool(message.redelivered)


def delivery_of(queue: str, message: InboundMessage, attempt: int) -> Delivery:
    return Delivery(
        queue=queue,
        body=message.body,
        message_id=message.message_id,
        redelivered=bool(message.redelivered) or attempt > 1,
        attempt=attempt,
        headers=message.headers or None,
    )


def copy_properties(message: InboundMessage, headers: HeadersType) -> spec.Basic.Properties:
    """The properties of a copy of `message` with `headers`."""
    original = message.properties
    # user_id is left out: RabbitMQ refuses a user_id other than the publishing connection's.
    return spec.Basic.Properties(
        content_type=original.content_type or JSON_CONTENT_TYPE,
        content_encoding=original.content_encoding,
        headers=headers,
        delivery_mode=PERSISTENT,
        priority=original.priority,
        correlation_id=original.correlation_id,
        reply_to=original.reply_to,
        expiration=original.expiration,
        message_id=original.message_id or uuid.uuid4().hex,
        timestamp=original.timestamp,
        message_type=original.message_type,
        app_id=original.app_id,
    )


async def settle(operation: Awaitable[None], message: InboundMessage, queue: str) -> None:
    """Sends an ack/nack/reject; a dead channel means the broker already took the message back."""
    try:
        await operation
    except TRANSPORT_ERRORS as exc:
        log.info(
            "Could not settle message %s on %s (%r); RabbitMQ will deliver it again",
            message.message_id,
            queue,
            exc,
        )


def channel_of(message: InboundMessage) -> AbstractChannel | None:
    """The aiormq channel a message came on, or None once that channel has closed."""
    try:
        return message.channel
    except ChannelInvalidStateError:
        return None


def is_stale(message: InboundMessage) -> bool:
    """Whether the channel it came on has died (the broker has already put it back)."""
    try:
        return message.channel.is_closed
    except ChannelInvalidStateError:
        return True


def _as_int(value: FieldValue | None) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value
