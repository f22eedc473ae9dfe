"""The routing rules of the wire contract (PROTOCOL §3-§4), written once.

The server, the reference broker, the agent SDK and every adapter call these; none of them
spells a rule of its own. Pure functions over envelopes and ids, no I/O:

- who may send which type (`frontend_frame_kind`, `check_from_frontend`, `check_from_agent`);
- receivers: "no receiver" is empty or `server` in any case (`names_no_receiver`,
  `receiver_of`), frontends talk to agents only (`check_frontend_receiver`), agent ids may not
  look like either (`reserved_agent_id_refusal`);
- sender identity: `sender_id`, else the frontend connection the server recorded (`sender_of`);
- the one builder of ERROR envelopes (`error_envelope`) and of status echoes (`status_echo`).
"""

from __future__ import annotations

from enum import StrEnum

from agentcomm.protocol.codec import encode_envelope
from agentcomm.protocol.errors import ProtocolError
from agentcomm.protocol.ids import FRONTEND_PREFIX, is_frontend_id, new_message_id
from agentcomm.protocol.models import Envelope
from agentcomm.protocol.timestamps import utc_now_iso
from agentcomm.protocol.vocabulary import (
    AGENT_SENDABLE,
    SERVER_RECEIVER,
    ErrorCode,
    MessageType,
    RoutingStatus,
)

# The chat messages a registered frontend sends into routing.
FRONTEND_CHAT_TYPES = frozenset({MessageType.TEXT, MessageType.CANCEL})

# Who the server's own ERRORs and refusals come from.
SERVER_SENDER = "server"

FRONTEND_TO_FRONTEND = (
    "Frontends talk to agents, not to other frontends: name an agent in receiver_id, "
    "or leave it empty to let the broker choose one."
)


class FrontendFrame(StrEnum):
    """What a frame of a registered frontend asks for."""

    CHAT = "chat"  # TEXT or CANCEL: routed
    STATUS_REQUEST = "status_request"  # REQUEST_AGENT_STATUS: the full agent list
    REGISTER = "register"  # REGISTER_FRONTEND again
    REFRESH_TOKEN = "refresh_token"  # a fresh token for the session


def frontend_frame_kind(message_type: MessageType, message_id: str | None) -> FrontendFrame:
    """What a registered frontend's frame of `message_type` is; ProtocolError for a type a
    frontend may not send."""
    if message_type in FRONTEND_CHAT_TYPES:
        return FrontendFrame.CHAT
    if message_type is MessageType.REQUEST_AGENT_STATUS:
        return FrontendFrame.STATUS_REQUEST
    if message_type is MessageType.REGISTER_FRONTEND:
        return FrontendFrame.REGISTER
    if message_type is MessageType.REFRESH_TOKEN:
        return FrontendFrame.REFRESH_TOKEN
    raise ProtocolError(
        ErrorCode.UNSUPPORTED_TYPE,
        f"Frontends cannot send {message_type.value}; they send TEXT, CANCEL, "
        "REQUEST_AGENT_STATUS and REFRESH_TOKEN.",
        message_id,
    )


def check_frontend_chat_type(message: Envelope) -> None:
    """A frontend's message on its way to routing is a TEXT or a CANCEL."""
    if message.message_type not in FRONTEND_CHAT_TYPES:
        raise ProtocolError(
            ErrorCode.UNSUPPORTED_TYPE,
            f"Frontends send TEXT or CANCEL to agents, not {message.message_type.value}.",
            message.message_id,
        )


def check_from_frontend(message: Envelope) -> None:
    """A frontend's chat message is one routing can take; ProtocolError says what to change."""
    check_frontend_chat_type(message)
    if message.message_type is MessageType.TEXT and not (message.text_payload or "").strip():
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE,
            "A TEXT needs a non-empty text_payload.",
            message.message_id,
        )
    if message.message_type is MessageType.CANCEL and not message.in_reply_to_message_id:
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE,
            "A CANCEL needs in_reply_to_message_id: the TEXT to stop.",
            message.message_id,
        )


def check_from_agent(message: Envelope) -> None:
    """An agent's message is one it may publish; ProtocolError otherwise."""
    if message.message_type not in AGENT_SENDABLE:
        raise ProtocolError(
            ErrorCode.UNSUPPORTED_TYPE,
            f"Agents cannot send {message.message_type.value}; "
            "they send REPLY, REPLY_CHUNK, SYSTEM or ERROR.",
            message.message_id,
        )


def names_no_receiver(receiver_id: str | None) -> bool:
    """Empty, or `server` in any case: "whoever routes this decides" (PROTOCOL §4)."""
    return not receiver_id or receiver_id.strip().lower() in ("", SERVER_RECEIVER)


def receiver_of(message: Envelope) -> str | None:
    """The receiver a message names, trimmed; None when it names no one."""
    receiver = message.receiver_id
    if names_no_receiver(receiver):
        return None
    assert receiver is not None
    return receiver.strip()


def check_frontend_receiver(receiver_id: str | None, message_id: str | None) -> None:
    """A frontend's message may name an agent or no one, never a frontend."""
    if receiver_id and is_frontend_id(receiver_id):
        raise ProtocolError(ErrorCode.UNKNOWN_RECEIVER, FRONTEND_TO_FRONTEND, message_id)


def sender_of(message: Envelope) -> str | None:
    """Who sent it: `sender_id`, or the frontend connection the server recorded."""
    sender = (message.sender_id or message.client_id or "").strip()
    return sender or None


def reserved_agent_id_refusal(agent_id: str) -> str | None:
    """Why `agent_id` cannot be an agent's (None: it can). Routing reads `server` as "no
    receiver" and `web_…` as a frontend: such an agent would be listed online and never be
    reachable."""
    if names_no_receiver(agent_id) or is_frontend_id(agent_id):
        return (
            f"agent_id {agent_id!r} is reserved: 'server' and ids starting with "
            f"'{FRONTEND_PREFIX}' name the server and frontends."
        )
    return None


def error_envelope(
    *,
    sender_id: str,
    receiver_id: str | None,
    code: ErrorCode,
    text: str,
    in_reply_to: str | None,
    conversation_id: str | None = None,
    client_id: str | None = None,
    server_id: str | None = None,
    hops: int = 0,
    routing_status: RoutingStatus = RoutingStatus.ERROR,
    message_id: str | None = None,
) -> Envelope:
    """The ERROR about message `in_reply_to`, for `receiver_id`.

    The server and brokers send it with status `error`; an agent (or the server on an agent's
    behalf) publishes it `pending`, for the broker to route like any answer.
    """
    return Envelope(
        message_id=message_id or new_message_id(),
        message_type=MessageType.ERROR,
        sender_id=sender_id,
        receiver_id=receiver_id,
        text_payload=text,
        send_timestamp=utc_now_iso(),
        in_reply_to_message_id=in_reply_to,
        conversation_id=conversation_id,
        routing_status=routing_status,
        error_code=code.value,
        client_id=client_id,
        server_id=server_id,
        hops=hops,
    )


def status_echo(
    message: Envelope, status: RoutingStatus, code: ErrorCode | str | None = None
) -> bytes:
    """The frame that tells a frontend where its own message stands (PROTOCOL §3): its TEXT
    again, with `routing_status` (and the `error_code` when it failed: ours, or whatever code a
    broker gave)."""
    return encode_envelope(
        message,
        for_client=True,
        routing_status=status,
        error_code=str(code) if code else None,
        message_type=MessageType.TEXT,
    )
