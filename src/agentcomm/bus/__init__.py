"""Message buses: one small interface (`base.Bus`), an in-process and a RabbitMQ implementation."""

from __future__ import annotations

from agentcomm.bus.base import (
    Bus,
    BusClosed,
    BusError,
    BusUnavailable,
    Delivery,
    MessageHandler,
    NotTaken,
    QueueOptions,
    Requeue,
    Subscription,
    Unroutable,
)

__all__ = [
    "Bus",
    "BusClosed",
    "BusError",
    "BusUnavailable",
    "Delivery",
    "MessageHandler",
    "NotTaken",
    "QueueOptions",
    "Requeue",
    "Subscription",
    "Unroutable",
]
