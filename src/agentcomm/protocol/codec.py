"""JSON encoding and validated decoding of wire messages.

Every decoder raises `ProtocolError` with the contract's error code, so that each transport can
answer bad input the same way.
"""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from agentcomm.protocol.errors import ProtocolError
from agentcomm.protocol.models import INTERNAL_FIELDS, Envelope, RegisterFrontend
from agentcomm.protocol.vocabulary import ErrorCode, MessageType

ModelT = TypeVar("ModelT", bound=BaseModel)


# Serialised straight to JSON by pydantic-core (one pass in Rust), not dumped to a dict first.


def encode_for_bus(model: BaseModel) -> bytes:
    """Everything, internal fields included, under their wire names."""
    return model.__pydantic_serializer__.to_json(model, by_alias=True, exclude_none=True)


def encode_for_client(model: BaseModel) -> bytes:
    """What a frontend or agent may see: internal fields stripped."""
    return model.__pydantic_serializer__.to_json(
        model, by_alias=True, exclude_none=True, exclude=set(INTERNAL_FIELDS)
    )


# Envelope fields in declaration order with their wire names (the order pydantic writes them in).
_ENVELOPE_BUS_NAMES: tuple[tuple[str, str], ...] = tuple(
    (name, field.alias or name) for name, field in Envelope.model_fields.items()
)
_ENVELOPE_CLIENT_NAMES = tuple(
    (name, wire) for name, wire in _ENVELOPE_BUS_NAMES if name not in INTERNAL_FIELDS
)


def encode_envelope(message: Envelope, *, for_client: bool, **changes: Any) -> bytes:
    """`encode_for_client` (or `encode_for_bus`) of `message` with `changes` applied to its
    fields, the same bytes, without a copy of the model.

    The server passes most messages on with a field or two changed (a status echo, the
    "delivered" copy for an agent, an agent's reply stamped with its sender): copying the model
    and serialising it through pydantic cost more than the message's own JSON. `changes` are
    field names and values of the fields' types; they are not validated again.
    """
    values = message.__dict__
    if changes:
        values = {**values, **changes}
    names = _ENVELOPE_CLIENT_NAMES if for_client else _ENVELOPE_BUS_NAMES
    try:
        return orjson.dumps(
            {wire: value for name, wire in names if (value := values[name]) is not None}
        )
    except orjson.JSONEncodeError:
        # metadata holding what orjson does not take (an integer beyond 64 bits): pydantic
        # writes every value it accepted.
        changed = message.model_copy(update=changes) if changes else message
        return encode_for_client(changed) if for_client else encode_for_bus(changed)


def parse_json_object(raw: bytes | str) -> dict[str, Any]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(ErrorCode.INVALID_JSON, f"The frame is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "A message must be a JSON object.")
    return data


def message_type_of(data: dict[str, Any]) -> MessageType:
    raw_type = data.get("message_type")
    if not isinstance(raw_type, str) or not raw_type:
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE, "The field message_type is missing.", reply_id(data)
        )
    try:
        return MessageType(raw_type)
    except ValueError:
        raise ProtocolError(
            ErrorCode.UNSUPPORTED_TYPE,
            f"Unknown message_type {raw_type[:64]!r}.",
            reply_id(data),
        ) from None


def validate_model(model: type[ModelT], data: dict[str, Any]) -> ModelT:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, _describe(exc), reply_id(data)) from None


def decode_envelope(raw: bytes | str) -> Envelope:
    """A chat message from the bus or an agent."""
    try:
        # The common case in one pass; anything it refuses is parsed again below, step by
        # step, so that the error names what is wrong the same way as before.
        return Envelope.model_validate_json(raw)
    except ValidationError:
        pass
    data = parse_json_object(raw)
    message_type_of(data)
    return validate_model(Envelope, data)


def decode_register_frontend(data: dict[str, Any]) -> RegisterFrontend:
    return validate_model(RegisterFrontend, data)


def reply_id(data: dict[str, Any]) -> str | None:
    """The message_id an answer to `data` can name, when it has a usable one."""
    message_id = data.get("message_id")
    if isinstance(message_id, str) and 0 < len(message_id) <= 128:
        return message_id
    return None


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:3]:
        where = ".".join(str(part) for part in error["loc"]) or "message"
        # A validator's own sentence, without pydantic's "Value error, " in front of it.
        parts.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
    return "Invalid message: " + "; ".join(parts) + "."
