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
DEAD_LETTERED_FROM_HEADER = "agentcomm-dead-lettered-from"
JSON_CONTENT_TYPE = "application/json"
PERSISTENT = int(DeliveryMode.PERSISTENT)


def attempt_of(message: InboundMessage) -> int:
    headers = message.headers or {}
    attempt = _as_int(headers.get(ATTEMPT_HEADER)) or 1
    # Quorum queues count deliveries themselves (including those lost to a crash).
    delivery_count = _as_int(headers.get("x-delivery-count"))
    if delivery_count is not None:
        attempt = max(attempt, delivery_count + 1)
    return max(attempt, 1)


def unsettled_before(message: InboundMessage) -> bool:
    """Handed out before and never settled: its consumer died with it, or gave it back.

    Quorum queues count such deliveries themselves (x-delivery-count); classic queues only
    flag them as redelivered."""
    return bool(message.redelivered) and "x-delivery-count" not in (message.headers or {})


def delivery_of(queue: str, message: InboundMessage, attempt: int) -> Delivery:
    return Delivery(
        queue=queue,
        body=message.body,
        message_id=message.message_id,
        redelivered=bool(message.redelivered) or attempt > 1,
        attempt=attempt,
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
