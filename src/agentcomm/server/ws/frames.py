"""Frames the WebSocket adapter writes of its own: refusals of what a frontend sent."""

from __future__ import annotations

from agentcomm.protocol.codec import encode_for_client, parse_json_object, reply_id
from agentcomm.protocol.errors import ProtocolError
from agentcomm.protocol.rules import SERVER_SENDER, error_envelope
from agentcomm.protocol.vocabulary import ErrorCode


def error_frame(
    code: ErrorCode, text: str, in_reply_to: str | None = None, receiver_id: str | None = None
) -> bytes:
    """The ERROR frame that refuses a frontend's frame, saying what to change."""
    return encode_for_client(
        error_envelope(
            sender_id=SERVER_SENDER,
            receiver_id=receiver_id,
            code=code,
            text=text,
            in_reply_to=in_reply_to,
        )
    )


def refusal_frame(error: ProtocolError, receiver_id: str | None = None) -> bytes:
    return error_frame(error.code, error.text, error.in_reply_to, receiver_id)


def message_id_of(raw: str) -> str | None:
    """The message_id of a frame, when it has a usable one, without validating the rest."""
    try:
        data = parse_json_object(raw)
    except ProtocolError:
        return None
    return reply_id(data)
