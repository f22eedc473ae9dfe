"""The RabbitMQ bus (aio-pika): durable queues, persistent confirmed publishes, manual acks.

`bus.py` is the bus itself; `wire/` puts its messages on the AMQP link and takes them off it.
"""

from __future__ import annotations

from agentcomm.bus.rabbitmq.bus import RabbitMQBus

__all__ = ["RabbitMQBus"]
