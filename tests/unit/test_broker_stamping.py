"""The broker's one-pass decode and the routed message stamped onto the sender's own JSON."""

from __future__ import annotations

import orjson
import pytest

from agentcomm.broker.routing import routed_envelope
from agentcomm.broker.stamping import decode_fields, routed_body
from agentcomm.protocol import Envelope, MessageType, ProtocolError, RoutingStatus
from agentcomm.protocol.codec import decode_envelope, encode_for_bus


def text() -> Envelope:
    return Envelope(
        message_type=MessageType.TEXT,
        message_id="m1",
        sender_id="web_abc",
        receiver_id="",
        text_payload="héllo \u2603",
        conversation_id="conv1",
        metadata={"required_capabilities": ["echo"], "n": 3},
        routing_status=RoutingStatus.PENDING,
        _client_id="web_abc",
        _server_id="server_1",
        _hops=2,
    )


def test_the_stamped_message_reads_as_the_routed_model_would() -> None:
    source = text()
    envelope, fields = decode_fields(encode_for_bus(source))
    assert envelope == source
    body = routed_body(fields, "agent_1", envelope.hops + 1)
    assert body is not None
    assert decode_envelope(body) == routed_envelope(source, "agent_1")
    assert decode_envelope(body).hops == 3


@pytest.mark.parametrize(
    "raw",
    [
        # Accepted, but spelled by field name rather than wire name.
        b'{"message_type": "TEXT", "message_id": "m1", "sender_id": "web_a", "hops": 4}',
        # No message_id of its own: validation made one up, which only the model carries.
        b'{"message_type": "TEXT", "sender_id": "web_a"}',
        # A key the envelope does not know.
        b'{"message_type": "TEXT", "message_id": "m1", "sender_id": "web_a", "extra": 1}',
    ],
)
def test_anything_else_is_left_to_the_model(raw: bytes) -> None:
    envelope, fields = decode_fields(raw)
    assert routed_body(fields, "agent_1", envelope.hops + 1) is None


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[1, 2]",
        b'{"message_id": "m1"}',
        b'{"message_type": "NOPE", "message_id": "m1", "sender_id": "web_a"}',
        b'{"message_type": "TEXT", "message_id": "bad id!", "sender_id": "web_a"}',
        b'{"message_type": "TEXT", "_hops": -1, "sender_id": "web_a"}',
    ],
)
def test_bad_input_is_refused_as_decode_envelope_refuses_it(raw: bytes) -> None:
    with pytest.raises(ProtocolError) as expected:
        decode_envelope(raw)
    with pytest.raises(ProtocolError) as got:
        decode_fields(raw)
    assert (got.value.code, got.value.text) == (expected.value.code, expected.value.text)


def test_the_stamp_keeps_every_other_field_as_the_sender_wrote_it() -> None:
    raw = encode_for_bus(text())
    envelope, fields = decode_fields(raw)
    body = routed_body(fields, "agent_1", envelope.hops + 1)
    assert body is not None
    written = orjson.loads(body)
    original = orjson.loads(raw)
    changed = {key for key in written if written[key] != original.get(key)}
    assert changed == {"receiver_id", "routing_status", "_hops"}
