"""Sizes of what the hub puts on the bus for one chat turn, so the floor carries the same."""

from __future__ import annotations

from agentcomm.protocol.codec import encode_for_bus
from agentcomm.protocol.ids import new_frontend_id, new_server_id
from agentcomm.protocol.models import Envelope
from agentcomm.protocol.timestamps import utc_now_iso
from agentcomm.protocol.vocabulary import MessageType, RoutingStatus
from agentcomm.sdk.envelopes import answer_id, chunk, reply


def chat_turn_bus_sizes(payload: str, agent_id: str = "echo") -> list[int]:
    """Body sizes of the five bus messages of one round trip, built as the hub builds them."""
    frontend = new_frontend_id()
    text = Envelope(
        message_type=MessageType.TEXT,
        sender_id=frontend,
        receiver_id=agent_id,
        text_payload=payload,
        routing_status=RoutingStatus.PENDING,
        send_timestamp=utc_now_iso(),
        _client_id=frontend,
        _server_id=new_server_id(),
        _hops=0,
    )
    routed = text.model_copy(update={"routing_status": RoutingStatus.ROUTED, "hops": 1})
    delivered = routed.model_copy(update={"routing_status": RoutingStatus.DELIVERED})
    answer = reply(delivered, agent_id, f"echo: {payload}")
    answer_routed = answer.model_copy(update={"routing_status": RoutingStatus.ROUTED, "hops": 2})
    return [len(encode_for_bus(m)) for m in (text, routed, delivered, answer, answer_routed)]


def mean_bus_size(payload: str) -> int:
    sizes = chat_turn_bus_sizes(payload)
    return round(sum(sizes) / len(sizes))


def chunk_bus_size(delta: str = "t100 ", agent_id: str = "streamer") -> int:
    """Body size of one REPLY_CHUNK on the bus (the mean of its two hops), as the SDK and the
    broker build it, so that the stream floor carries the same."""
    frontend = new_frontend_id()
    text = Envelope(
        message_type=MessageType.TEXT,
        sender_id=frontend,
        receiver_id=agent_id,
        text_payload="300 50",
        routing_status=RoutingStatus.DELIVERED,
        send_timestamp=utc_now_iso(),
        _client_id=frontend,
        _server_id=new_server_id(),
        _hops=1,
    )
    part = chunk(text, agent_id, answer_id(text), 100, delta)
    routed = part.model_copy(update={"routing_status": RoutingStatus.ROUTED, "hops": 2})
    return round((len(encode_for_bus(part)) + len(encode_for_bus(routed))) / 2)
