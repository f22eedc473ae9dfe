"""How an agent takes its work, and which of those ways a hub can serve.

An agent names its transport when it registers (`AgentRegistrationRequest.transport`) and the
server answers with the bus it runs (`AgentRegistrationResponse.message_bus`). A transport that
cannot reach that bus is refused at registration, in one sentence that says what to change: an
agent listed online while its messages wait where it never reads them looks healthy and answers
nothing.
"""

from __future__ import annotations

from enum import StrEnum


class Transport(StrEnum):
    # The server consumes agent_queue_<id> for the agent and streams it (ReceiveMessages).
    GRPC = "grpc"
    # The agent consumes agent_queue_<id> on RabbitMQ itself.
    AMQP = "amqp"
    # The agent consumes the hub's in-process bus, inside the hub's own process (`agentcomm dev`).
    MEMORY = "memory"


class MessageBus(StrEnum):
    """The bus a hub runs (MESSAGE_BUS)."""

    RABBITMQ = "rabbitmq"
    MEMORY = "memory"


AMQP_ON_MEMORY = (
    "This hub runs its in-process bus (MESSAGE_BUS=memory), which an agent in another process "
    "cannot consume: start the agent with --transport grpc (Agent(transport='grpc')), or with "
    "MESSAGE_BUS=memory, to take its work over gRPC."
)
MEMORY_ON_RABBITMQ = (
    "This hub runs on RabbitMQ (MESSAGE_BUS=rabbitmq), so an agent consuming an in-process bus "
    "would never see its messages: give it no bus, or use --transport grpc."
)


def transport_refusal(transport: str, message_bus: str) -> str | None:
    """Why a hub on `message_bus` cannot serve an agent taking its work over `transport`; None
    when it can. An empty transport (an agent that does not say) is taken on trust."""
    if transport == Transport.AMQP and message_bus == MessageBus.MEMORY:
        return AMQP_ON_MEMORY
    if transport == Transport.MEMORY and message_bus == MessageBus.RABBITMQ:
        return MEMORY_ON_RABBITMQ
    return None


def is_known_transport(transport: str) -> bool:
    """Whether `transport` is empty (not said) or one of Transport's values."""
    return not transport or transport in Transport._value2member_map_
