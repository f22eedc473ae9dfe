"""REQUEST_HISTORY on a frontend's socket: one page of a conversation of the session's user.

The answer is a HISTORY frame (the messages in seq order, and whether more follow), or an ERROR
that says what to do: `unknown_conversation`, `unrecoverable` (retention removed what was asked
for; its metadata names `first_seq`, to reload from), `history_unavailable`.
"""

from __future__ import annotations

from typing import Any

import orjson

from agentcomm.history.records import ConversationNotFound, StoreUnavailable, Unrecoverable
from agentcomm.history.store import ConversationStore
from agentcomm.protocol.codec import encode_for_client
from agentcomm.protocol.errors import ProtocolError
from agentcomm.protocol.models import RequestHistory
from agentcomm.protocol.rules import SERVER_SENDER, error_envelope
from agentcomm.protocol.timestamps import utc_now_iso
from agentcomm.protocol.vocabulary import ErrorCode, MessageType


async def history_frame(
    store: ConversationStore | None, user: str, frontend_id: str, request: RequestHistory
) -> bytes:
    """The frame that answers `request`; ProtocolError for what the frontend must change."""
    if store is None:
        raise ProtocolError(
            ErrorCode.HISTORY_UNAVAILABLE,
            "History is off on this hub (HISTORY_URL=none).",
            request.message_id,
        )
    try:
        page = await store.messages(
            user, request.conversation_id, after=request.after_seq, limit=request.limit
        )
    except ConversationNotFound:
        raise ProtocolError(
            ErrorCode.UNKNOWN_CONVERSATION,
            f"You have no conversation {request.conversation_id!r}.",
            request.message_id,
        ) from None
    except Unrecoverable as exc:
        error = error_envelope(
            sender_id=SERVER_SENDER,
            receiver_id=frontend_id,
            code=ErrorCode.UNRECOVERABLE,
            text=str(exc),
            in_reply_to=request.message_id,
            conversation_id=request.conversation_id,
        )
        return encode_for_client(
            error.model_copy(update={"metadata": {"first_seq": exc.first_seq}})
        )
    except StoreUnavailable:
        raise ProtocolError(
            ErrorCode.HISTORY_UNAVAILABLE,
            "History cannot be read right now; try again shortly.",
            request.message_id,
        ) from None
    messages = [item.as_json() for item in page.messages]
    last_read = page.messages[-1].seq if page.messages else request.after_seq
    body: dict[str, Any] = {
        "message_type": MessageType.HISTORY.value,
        "in_reply_to_message_id": request.message_id,
        "conversation_id": request.conversation_id,
        "messages": messages,
        "first_seq": page.first_seq,
        "last_seq": page.last_seq,
        "has_more": last_read < page.last_seq,
        "send_timestamp": utc_now_iso(),
    }
    return orjson.dumps(body)
