"""The RabbitMQ scenarios run on both of the bus's wires: its own AMQP framing (the default)
and plain aio-pika (RABBITMQ_FAST_PATH=0). A scenario asks for `rabbitmq_fast_path` and hands
it to the buses it starts; scenarios on the in-process bus do not ask, and run once."""

from __future__ import annotations

import pytest


@pytest.fixture(params=[pytest.param(True, id="fast-path"), pytest.param(False, id="plain")])
def rabbitmq_fast_path(request: pytest.FixtureRequest) -> bool:
    fast_path: bool = request.param
    return fast_path
