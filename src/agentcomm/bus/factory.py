"""Builds the bus that Settings ask for; the one place that knows both implementations."""

from __future__ import annotations

from agentcomm.bus.base import Bus
from agentcomm.bus.memory import InMemoryBus
from agentcomm.bus.rabbitmq import RabbitMQBus
from agentcomm.config import Settings
from agentcomm.telemetry import tracing_for


def create_bus(settings: Settings, *, name: str = "agentcomm") -> Bus:
    """A new, not yet connected bus: `MESSAGE_BUS=memory` or `rabbitmq`.

    There is no fallback: a RabbitMQ that cannot be reached is reported by `connect()`, never
    replaced by the in-process bus, whose queues other processes cannot see. `name` labels the
    RabbitMQ connection (e.g. "agentcomm-server"); `RABBITMQ_FAST_PATH=0` runs it on plain
    aio-pika instead of its own AMQP framing; `RABBITMQ_QUEUE_TYPE` is the type of the queues
    it declares; `RABBITMQ_HOSTS` the nodes of a RabbitMQ cluster it connects to in turn.
    With tracing on (the `OTEL_*` variables) it records the messaging spans of traced turns.
    """
    bus = _create(settings, name)
    tracing = tracing_for("agentcomm.bus")
    if tracing is None:
        return bus
    # Only now, with tracing on: a process without it runs the bus unwrapped.
    from agentcomm.telemetry.bus import TracedBus

    system = "agentcomm.memory" if settings.message_bus == "memory" else "rabbitmq"
    return TracedBus(bus, tracing, system=system)


def _create(settings: Settings, name: str) -> Bus:
    if settings.message_bus == "memory":
        return InMemoryBus()
    if settings.message_bus == "rabbitmq":
        return RabbitMQBus(
            settings.rabbitmq_url,
            connect_attempts=settings.rabbitmq_connect_attempts,
            prefetch_default=settings.rabbitmq_prefetch,
            heartbeat=settings.rabbitmq_heartbeat,
            name=name,
            fast_path=settings.rabbitmq_fast_path,
            queue_type=settings.rabbitmq_queue_type,
            hosts=settings.rabbitmq_nodes,
        )
    raise ValueError(
        f"Unknown message bus {settings.message_bus!r}: MESSAGE_BUS accepts 'rabbitmq' or 'memory'."
    )
