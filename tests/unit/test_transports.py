"""Which ways of taking work a hub's bus can serve (protocol/transports.py)."""

from __future__ import annotations

import pytest

from agentcomm.protocol.transports import (
    AMQP_ON_MEMORY,
    MEMORY_ON_RABBITMQ,
    is_known_transport,
    transport_refusal,
)


@pytest.mark.parametrize(
    ("transport", "bus", "refused"),
    [
        ("", "memory", None),  # an agent that does not say is taken on trust
        ("", "rabbitmq", None),
        ("grpc", "memory", None),
        ("grpc", "rabbitmq", None),
        ("amqp", "rabbitmq", None),
        ("memory", "memory", None),
        ("amqp", "memory", AMQP_ON_MEMORY),
        ("memory", "rabbitmq", MEMORY_ON_RABBITMQ),
    ],
)
def test_a_transport_that_cannot_reach_the_bus_is_refused(
    transport: str, bus: str, refused: str | None
) -> None:
    assert transport_refusal(transport, bus) == refused


def test_the_refusal_of_amqp_says_what_to_change() -> None:
    assert "MESSAGE_BUS=memory" in AMQP_ON_MEMORY
    assert "--transport grpc" in AMQP_ON_MEMORY


def test_unknown_transports_are_told_apart() -> None:
    assert all(is_known_transport(name) for name in ("", "grpc", "amqp", "memory"))
    assert not is_known_transport("carrier-pigeon")
