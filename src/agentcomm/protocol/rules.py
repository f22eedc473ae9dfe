"""The routing rules of the wire contract (PROTOCOL §3-§4), written once.

The server, the reference broker, the agent SDK and every adapter call these; none of them
spells a rule of its own. Pure functions over envelopes and ids, no I/O:

- who may send which type (`frontend_frame_kind`, `check_from_frontend`, `check_from_agent`);
- receivers: "no receiver" is empty or `server` in any case (`names_no_receiver`,
  `receiver_of`), frontends talk to agents only (`check_frontend_receiver`), agent ids may not
  look like either (`reserved_agent_id_refusal`);
- sender identity: `sender_id`, else the frontend connection the server recorded (`sender_of`);
- the one builder of ERROR envelopes (`error_envelope`) and of status echoes (`status_echo`),
  and which echoes a frontend takes (`wants_status_echo`);
- calls between agents: who an agent may ask, and how many at once (`call_refusal`,
  `calls_in_flight_refusal`);
- what a broker sent back: a refusal in the broker's own words (`broker_refusal_code`,
  `broker_refusal_words`), an answer to a frontend bounced to the server
  (`restore_bounced_answer`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any

from agentcomm.protocol.codec import encode_envelope
from agentcomm.protocol.errors import ProtocolError
from agentcomm.protocol.ids import FRONTEND_PREFIX, is_frontend_id, new_message_id
from agentcomm.protocol.models import Envelope
from agentcomm.protocol.timestamps import utc_now_iso
from agentcomm.protocol.vocabulary import (
    AGENT_SENDABLE,
    MAX_HOPS,
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
    HISTORY_REQUEST = "history_request"  # REQUEST_HISTORY: stored messages after a seq


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
    if message_type is MessageType.REQUEST_HISTORY:
        return FrontendFrame.HISTORY_REQUEST
    raise ProtocolError(
        ErrorCode.UNSUPPORTED_TYPE,
        f"Frontends cannot send {message_type.value}; they send TEXT, CANCEL, "
        "REQUEST_AGENT_STATUS, REFRESH_TOKEN and REQUEST_HISTORY.",
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
    multitask_policy(message)


class Multitask(StrEnum):
    """What a TEXT asks for (`metadata.multitask`) when its conversation's answer still runs."""

    ALLOW = "allow"  # the default: it goes to the agent as well
    REJECT = "reject"  # ERROR conversation_busy at once


MULTITASK_KEY = "multitask"


def multitask_policy(message: Envelope) -> Multitask:
    """The double-texting policy of a frontend's TEXT; ProtocolError for one not offered."""
    value = (message.metadata or {}).get(MULTITASK_KEY)
    if value is None or message.message_type is not MessageType.TEXT:
        return Multitask.ALLOW
    try:
        return Multitask(value)
    except ValueError:
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE,
            f"metadata.multitask must be one of {', '.join(m.value for m in Multitask)}; "
            f"got {value!r}.",
            message.message_id,
        ) from None


def check_from_agent(message: Envelope) -> None:
    """An agent's message is one it may publish; ProtocolError otherwise."""
    if message.message_type not in AGENT_SENDABLE:
        raise ProtocolError(
            ErrorCode.UNSUPPORTED_TYPE,
            f"Agents cannot send {message.message_type.value}; "
            "they send REPLY, REPLY_CHUNK, SYSTEM, ERROR, and TEXT or CANCEL to other agents.",
            message.message_id,
        )
    if message.message_type is MessageType.TEXT and not (message.text_payload or "").strip():
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE, "A TEXT needs a non-empty text_payload.", message.message_id
        )
    if message.message_type is MessageType.CANCEL and not message.in_reply_to_message_id:
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE,
            "A CANCEL needs in_reply_to_message_id: the TEXT to stop.",
            message.message_id,
        )
    if message.message_type is MessageType.TEXT and is_frontend_id(message.receiver_id or ""):
        raise ProtocolError(
            ErrorCode.UNKNOWN_RECEIVER,
            "An agent asks other agents; it answers a frontend with REPLY, not with a TEXT.",
            message.message_id,
        )


# -- calls between agents ---------------------------------------------------------------------


def call_refusal(
    asker_id: str, receiver_id: str | None, chain: Sequence[str]
) -> tuple[ErrorCode, str] | None:
    """Why `asker_id` may not ask `receiver_id` (None: any agent the broker picks) with a TEXT
    whose call has `chain` (the agents waiting on it, the asker last); None when it may.

    An agent that asks itself, or an agent already waiting in the chain, would wait for an
    answer that waits for it (a cycle); a chain longer than MAX_HOPS is most likely one going
    round through ever new messages."""
    if receiver_id is not None and receiver_id == asker_id:
        return ErrorCode.CALL_CYCLE, f"Agent {asker_id} cannot ask itself."
    if receiver_id is not None and receiver_id in chain:
        path = " → ".join((*chain, receiver_id))
        return (
            ErrorCode.CALL_CYCLE,
            f"Agent {receiver_id} is already waiting in this chain of calls ({path}): asking "
            "it again would go round in a loop.",
        )
    if len(chain) > MAX_HOPS:
        return (
            ErrorCode.HOP_LIMIT,
            f"This call would make a chain of {len(chain)} agents waiting on each other, more "
            f"than {MAX_HOPS}: it is probably going round in a loop.",
        )
    return None


def calls_in_flight_refusal(asker_id: str, in_flight: int, limit: int) -> str | None:
    """Why `asker_id` may not make one more call while `in_flight` of its calls are unanswered
    (None: it may): each one holds a message of the agent asked, and a handler that asks in a
    loop would otherwise fill every queue it reaches."""
    if in_flight >= limit:
        return (
            f"Agent {asker_id} has {in_flight} calls to other agents waiting for answers, its "
            f"limit: wait for some of them to finish (or raise max_calls_in_flight)."
        )
    return None


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


def frontend_concerned(message: Envelope) -> str | None:
    """The frontend a message is about: the one it is addressed to, else the one that sent it
    (its TEXT or CANCEL on the way to an agent, or an error about it); None when neither is a
    frontend."""
    receiver = receiver_of(message)
    if receiver is not None and is_frontend_id(receiver):
        return receiver
    sender = sender_of(message)
    return sender if sender is not None and is_frontend_id(sender) else None


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
    message: Envelope,
    status: RoutingStatus,
    code: ErrorCode | str | None = None,
    reason: str | None = None,
) -> bytes:
    """The frame that tells a frontend where its own message stands (PROTOCOL §3): its TEXT
    again, with `routing_status` (and, when it failed, the `error_code` — ours, or whatever
    code a broker gave — and the sentence of why as `routing_status_message`, where the
    described system's UI looks for it)."""
    return encode_envelope(
        message,
        for_client=True,
        routing_status=status,
        error_code=str(code) if code else None,
        routing_status_message=reason if status is RoutingStatus.ERROR else None,
        message_type=MessageType.TEXT,
    )


# A frontend that cannot take the `delivered` echo (clients written for the described system
# know only pending, routed and error) registers with this capability set to false.
DELIVERED_ECHO_CAPABILITY = "delivered_echo"
_OFF = frozenset({"false", "0", "no", "off"})


def wants_status_echo(capabilities: Mapping[str, Any], status: RoutingStatus) -> bool:
    """Whether a frontend registered with `capabilities` is sent echoes of `status`."""
    if status is not RoutingStatus.DELIVERED:
        return True
    value = capabilities.get(DELIVERED_ECHO_CAPABILITY, True)
    return not (value is False or value == 0 or (isinstance(value, str) and value.lower() in _OFF))


# -- what a broker sent back -----------------------------------------------------------------

# The described system's broker gives no error_code, only a sentence in
# `routing_status_message`: "No other online agents available …" when it has no agent to offer.
_NO_AGENT_AVAILABLE = re.compile(r"\bno\b.*\bagents?\b.*\bavailable\b", re.IGNORECASE | re.DOTALL)
REFUSED_WITHOUT_WORDS = "The broker could not route the message."


def broker_refusal_code(message: Envelope) -> str:
    """The error code of a broker's refusal: its own `error_code`; else what its sentence says
    (`no_agent_available`); else `internal`."""
    if message.error_code:
        return message.error_code
    if _NO_AGENT_AVAILABLE.search(message.routing_status_message or ""):
        return ErrorCode.NO_AGENT_AVAILABLE.value
    return ErrorCode.INTERNAL.value


def broker_refusal_words(message: Envelope, *, bounced_itself: bool) -> str:
    """The sentence a sender is told, in the broker's own words: its `routing_status_message`,
    else its `text_payload` — unless the broker sent the sender's message itself back, whose
    text is the sender's own."""
    for words in (message.routing_status_message, None if bounced_itself else message.text_payload):
        if words and words.strip():
            return words
    return REFUSED_WITHOUT_WORDS


def restore_bounced_answer(
    bounced: Envelope,
    *,
    frontend_id: str,
    in_reply_to: str,
    known_type: MessageType | None = None,
    known_code: str | None = None,
) -> Envelope | None:
    """What the frontend that asked gets for an answer a broker sent back instead of on.

    `known_type` (REPLY or ERROR) and `known_code` say what the agent sent, when the server
    knows it (from the answer's id, or because the answer passed through it). A broker that
    kept the answer's type only got the address wrong: the answer goes on as it is. One that
    wrapped it into an ERROR without a code of its own (the described system's broker does so
    with a REPLY, keeping its text) had an answer to pass on, not an error of the agent: the
    frontend gets a REPLY with that text, and the broker's complaint stays in the server's log.
    An ERROR of the agent stays an ERROR. A wrapped answer without text was a REPLY_CHUNK (its
    `text_delta` did not survive): None, nothing to pass on; the final REPLY carries the whole
    text.
    """
    kind: MessageType
    if bounced.message_type is not MessageType.ERROR:
        kind = bounced.message_type
    elif known_type is not None:
        kind = known_type
    else:
        kind = MessageType.ERROR if bounced.error_code else MessageType.REPLY
    text = bounced.text_payload
    code = None
    if kind is MessageType.ERROR:
        code = known_code or bounced.error_code or ErrorCode.INTERNAL.value
        text = text or f"Agent {bounced.sender_id} could not answer this message."
    elif bounced.message_type is MessageType.ERROR and not text:
        return None
    return bounced.model_copy(
        update={
            "message_type": kind,
            "receiver_id": frontend_id,
            "in_reply_to_message_id": in_reply_to,
            "routing_status": RoutingStatus.ROUTED,
            "error_code": code,
            "routing_status_message": None,
            "text_payload": text,
            "send_timestamp": bounced.send_timestamp or utc_now_iso(),
            "client_id": frontend_id,
        }
    )
