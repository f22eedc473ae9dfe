"""The JSON codec is the parser of all outside input: whatever arrives, it either decodes or
raises ProtocolError with one of the contract's error codes; valid envelopes round-trip."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agentcomm.protocol.codec import (
    decode_envelope,
    decode_register_frontend,
    encode_envelope,
    encode_for_bus,
    encode_for_client,
    message_type_of,
    parse_json_object,
)
from agentcomm.protocol.errors import ProtocolError
from agentcomm.protocol.ids import ID_PATTERN, is_valid_id
from agentcomm.protocol.models import MAX_METADATA_DEPTH, MAX_METADATA_ITEMS, Envelope
from agentcomm.protocol.vocabulary import ErrorCode, MessageType, RoutingStatus

PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ENVELOPE_KEYS = [
    "message_type",
    "message_id",
    "sender_id",
    "receiver_id",
    "text_payload",
    "send_timestamp",
    "in_reply_to_message_id",
    "conversation_id",
    "routing_status",
    "error_code",
    "metadata",
    "seq",
    "text_delta",
    "_client_id",
    "_server_id",
    "_hops",
    "frontend_name",
    "frontend_id",
    "resume_token",
    "capabilities",
    "token",
]

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=8,
)
message_types = st.sampled_from([t.value for t in MessageType]) | st.text(max_size=12)
envelope_like = st.tuples(
    st.dictionaries(st.sampled_from(ENVELOPE_KEYS) | st.text(max_size=8), json_values, max_size=8),
    st.none() | message_types,
).map(lambda pair: pair[0] if pair[1] is None else {**pair[0], "message_type": pair[1]})


def assert_protocol_error(exc: ProtocolError) -> None:
    assert isinstance(exc.code, ErrorCode)
    assert isinstance(exc.text, str)
    assert exc.text
    assert exc.in_reply_to is None or (
        isinstance(exc.in_reply_to, str) and 0 < len(exc.in_reply_to) <= 128
    )


def decodes_or_refuses(raw: bytes | str) -> Envelope | None:
    try:
        envelope = decode_envelope(raw)
    except ProtocolError as exc:
        assert_protocol_error(exc)
        return None
    # Whatever was accepted can be sent on: encoding never fails.
    assert decode_envelope(encode_for_bus(envelope)) == envelope
    encode_for_client(envelope)
    return envelope


# -- arbitrary input ---------------------------------------------------------------------------


@PROPERTY
@given(st.binary(max_size=300))
@example(b"")
@example(b"\xff\xfe")
@example(b"[" * 5000)
@example(b'{"message_type": "TEXT", "text_payload": "\\ud800"}')
@example(b'{"message_type": "TEXT"}' * 2)
@example(b"NaN")
@example(b"1e400")
def test_any_bytes_decode_or_raise_protocol_error(raw: bytes) -> None:
    decodes_or_refuses(raw)


@PROPERTY
@given(
    st.text(
        alphabet=st.characters(codec=None, categories=None)
        | st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
        | st.sampled_from('{}[]":,\\'),
        max_size=200,
    )
)
@example('{"message_type": "TEXT", "text_payload": "\ud800"}')
def test_any_text_decodes_or_raises_protocol_error(raw: str) -> None:
    # Lone surrogates included: a str from a WebSocket frame could in principle carry them.
    decodes_or_refuses(raw)


@PROPERTY
@given(json_values)
def test_any_json_value_is_an_object_or_invalid_message(value: Any) -> None:
    raw = json.dumps(value)
    if isinstance(value, dict):
        assert parse_json_object(raw) == orjson.loads(raw)
    else:
        with pytest.raises(ProtocolError) as refused:
            parse_json_object(raw)
        assert refused.value.code is ErrorCode.INVALID_MESSAGE


@PROPERTY
@given(envelope_like)
def test_any_json_object_decodes_or_raises_protocol_error(data: dict[str, Any]) -> None:
    envelope = decodes_or_refuses(json.dumps(data))
    if envelope is not None:
        assert envelope.message_type.value == data["message_type"]


@PROPERTY
@given(envelope_like)
def test_any_json_object_as_registration_decodes_or_raises(data: dict[str, Any]) -> None:
    try:
        message_type_of(data)
        request = decode_register_frontend(data)
    except ProtocolError as exc:
        assert_protocol_error(exc)
        return
    assert request.frontend_name
    assert request.frontend_id is None or is_valid_id(request.frontend_id)


@PROPERTY
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=5), json_values)
def test_message_type_errors_carry_a_usable_reply_id(data: dict[str, Any], message_id: Any) -> None:
    data = {**data, "message_id": message_id}
    data.pop("message_type", None)
    with pytest.raises(ProtocolError) as refused:
        message_type_of(data)
    assert refused.value.code is ErrorCode.INVALID_MESSAGE
    assert_protocol_error(refused.value)
    if isinstance(message_id, str) and 0 < len(message_id) <= 128:
        assert refused.value.in_reply_to == message_id
    else:
        assert refused.value.in_reply_to is None


# -- specific refusals ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"", ErrorCode.INVALID_JSON),
        (b"{", ErrorCode.INVALID_JSON),
        (b"\xff", ErrorCode.INVALID_JSON),
        (b"[" * 5000 + b"]" * 5000, ErrorCode.INVALID_JSON),
        (b"[]", ErrorCode.INVALID_MESSAGE),
        (b"null", ErrorCode.INVALID_MESSAGE),
        (b"{}", ErrorCode.INVALID_MESSAGE),
        (b'{"message_type": 1}', ErrorCode.INVALID_MESSAGE),
        (b'{"message_type": "NOPE"}', ErrorCode.UNSUPPORTED_TYPE),
        (b'{"message_type": "text"}', ErrorCode.UNSUPPORTED_TYPE),
        (b'{"message_type": "TEXT", "message_id": "a b"}', ErrorCode.INVALID_MESSAGE),
        (b'{"message_type": "TEXT", "message_id": ""}', ErrorCode.INVALID_MESSAGE),
        (b'{"message_type": "TEXT", "routing_status": "lost"}', ErrorCode.INVALID_MESSAGE),
        (b'{"message_type": "TEXT", "seq": -1}', ErrorCode.INVALID_MESSAGE),
        (b'{"message_type": "TEXT", "_hops": -1}', ErrorCode.INVALID_MESSAGE),
        (b'{"message_type": "TEXT", "metadata": []}', ErrorCode.INVALID_MESSAGE),
    ],
)
def test_refusal_codes(raw: bytes, code: ErrorCode) -> None:
    with pytest.raises(ProtocolError) as refused:
        decode_envelope(raw)
    assert refused.value.code is code


def test_unknown_keys_are_ignored() -> None:
    envelope = decode_envelope(b'{"message_type": "TEXT", "message_id": "m1", "x-new": 1}')
    assert envelope.message_id == "m1"
    assert "x-new" not in orjson.loads(encode_for_bus(envelope))


def test_missing_message_id_is_assigned() -> None:
    first = decode_envelope(b'{"message_type": "TEXT"}')
    second = decode_envelope(b'{"message_type": "TEXT"}')
    assert is_valid_id(first.message_id)
    assert first.message_id != second.message_id


def test_unsupported_type_names_the_message() -> None:
    with pytest.raises(ProtocolError) as refused:
        decode_envelope(b'{"message_type": "NOPE", "message_id": "m-7"}')
    assert refused.value.in_reply_to == "m-7"
    assert "NOPE" in refused.value.text


# -- round trips ---------------------------------------------------------------------------------

ids = st.from_regex(ID_PATTERN, fullmatch=True)
short_text = st.text(max_size=64)
string_maps = st.dictionaries(st.text(min_size=1, max_size=16), st.text(max_size=32), max_size=8)

envelopes = st.builds(
    Envelope,
    message_type=st.sampled_from(list(MessageType)),
    message_id=ids,
    sender_id=st.none() | ids,
    receiver_id=st.none() | ids,
    text_payload=st.none() | st.text(max_size=200),
    send_timestamp=st.none() | st.just("2026-01-01T00:00:00.000Z"),
    in_reply_to_message_id=st.none() | ids,
    conversation_id=st.none() | ids,
    routing_status=st.none() | st.sampled_from(list(RoutingStatus)),
    error_code=st.none() | st.sampled_from([code.value for code in ErrorCode]),
    metadata=st.none() | string_maps,
    seq=st.none() | st.integers(min_value=0, max_value=2**31),
    text_delta=st.none() | short_text,
    client_id=st.none() | ids,
    server_id=st.none() | ids,
    hops=st.integers(min_value=0, max_value=16),
)


@PROPERTY
@given(envelopes)
def test_valid_envelopes_round_trip_on_the_bus(envelope: Envelope) -> None:
    encoded = encode_for_bus(envelope)
    assert decode_envelope(encoded) == envelope
    assert decode_envelope(encoded.decode()) == envelope


@PROPERTY
@given(envelopes)
def test_clients_never_see_internal_fields(envelope: Envelope) -> None:
    data = orjson.loads(encode_for_client(envelope))
    assert not any(key.startswith("_") for key in data)
    assert "client_id" not in data
    assert "server_id" not in data
    decoded = decode_envelope(encode_for_client(envelope))
    assert decoded == envelope.model_copy(update={"client_id": None, "server_id": None, "hops": 0})


@PROPERTY
@given(envelopes)
def test_internal_fields_travel_on_the_bus_under_their_wire_names(envelope: Envelope) -> None:
    data = orjson.loads(encode_for_bus(envelope))
    assert data["_hops"] == envelope.hops
    assert data.get("_client_id") == envelope.client_id
    assert data.get("_server_id") == envelope.server_id
    assert "hops" not in data


@PROPERTY
@given(envelopes)
def test_encode_envelope_writes_what_pydantic_writes(envelope: Envelope) -> None:
    assert encode_envelope(envelope, for_client=False) == encode_for_bus(envelope)
    assert encode_envelope(envelope, for_client=True) == encode_for_client(envelope)


@PROPERTY
@given(
    envelopes,
    st.sampled_from(list(RoutingStatus)),
    st.none() | st.sampled_from([code.value for code in ErrorCode]),
)
def test_encode_envelope_with_changes_is_the_changed_copy(
    envelope: Envelope, status: RoutingStatus, code: str | None
) -> None:
    before = encode_for_bus(envelope)
    changes: dict[str, Any] = {"routing_status": status, "error_code": code}
    changed = envelope.model_copy(update=changes)
    assert encode_envelope(envelope, for_client=True, **changes) == encode_for_client(changed)
    assert encode_envelope(envelope, for_client=False, **changes) == encode_for_bus(changed)
    assert encode_for_bus(envelope) == before  # the message itself is left as it was


def test_encode_envelope_takes_metadata_orjson_cannot_write() -> None:
    envelope = Envelope(message_type=MessageType.TEXT, metadata={"big": 2**70, "nan": float("nan")})
    assert encode_envelope(envelope, for_client=True) == encode_for_client(envelope)
    changed = encode_envelope(envelope, for_client=False, routing_status=RoutingStatus.ROUTED)
    assert changed == encode_for_bus(
        envelope.model_copy(update={"routing_status": RoutingStatus.ROUTED})
    )


def _nested(depth: int) -> dict[str, Any]:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return dict(value)


@pytest.mark.parametrize("depth", [MAX_METADATA_DEPTH + 1, 254, 255, 300, 1000])
def test_metadata_nested_too_deep_is_invalid_message_at_the_edge(depth: int) -> None:
    # Written by hand: no encoder writes JSON this deep (which is the point of the limit).
    metadata = '{"a":' * depth + "1" + "}" * depth
    raw = '{"message_type": "TEXT", "message_id": "m1", "metadata": ' + metadata + "}"
    with pytest.raises(ProtocolError) as caught:
        decode_envelope(raw)
    assert caught.value.code is ErrorCode.INVALID_MESSAGE
    assert caught.value.in_reply_to == "m1"
    assert f"at most {MAX_METADATA_DEPTH} levels" in caught.value.text
    # A sentence of ours, not a library's class name.
    assert "Error" not in caught.value.text
    assert "pydantic" not in caught.value.text


def test_metadata_as_deep_as_allowed_is_accepted_and_encodes() -> None:
    envelope = decode_envelope(
        orjson.dumps({"message_type": "TEXT", "metadata": _nested(MAX_METADATA_DEPTH)})
    )
    assert decode_envelope(encode_for_bus(envelope)).metadata == envelope.metadata


def test_metadata_with_too_many_values_is_invalid_message() -> None:
    metadata = {"many": list(range(MAX_METADATA_ITEMS))}
    with pytest.raises(ProtocolError) as caught:
        decode_envelope(orjson.dumps({"message_type": "TEXT", "metadata": metadata}))
    assert caught.value.code is ErrorCode.INVALID_MESSAGE
    assert f"at most {MAX_METADATA_ITEMS} values" in caught.value.text


def test_frontend_capabilities_have_the_same_bounds() -> None:
    data = {"message_type": "REGISTER_FRONTEND", "frontend_name": "x", "capabilities": _nested(20)}
    with pytest.raises(ProtocolError) as caught:
        decode_register_frontend(data)
    assert "capabilities may nest" in caught.value.text
