"""The envelopes an agent sends back, built from the message they answer (PROTOCOL §2-§4)."""

from __future__ import annotations

from typing import Any

from agentcomm.protocol import Envelope, ErrorCode, MessageType, RoutingStatus
from agentcomm.protocol.ids import answer_message_id
from agentcomm.protocol.models import CHUNK_COUNT_KEY
from agentcomm.protocol.rules import error_envelope
from agentcomm.protocol.timestamps import utc_now_iso
from agentcomm.sdk.errors import CallFailed


def _answer(
    incoming: Envelope, agent_id: str, message_type: MessageType, message_id: str, **fields: Any
) -> Envelope:
    return Envelope(
        message_type=message_type,
        message_id=message_id,
        sender_id=agent_id,
        receiver_id=incoming.sender_id,
        in_reply_to_message_id=incoming.message_id,
        conversation_id=incoming.conversation_id,
        routing_status=RoutingStatus.PENDING,
        send_timestamp=utc_now_iso(),
        # The server that holds the sender's socket and the hop count travel with the answer,
        # so that a reply finds its way back and agent-to-agent loops stay bounded.
        _client_id=incoming.client_id,
        _server_id=incoming.server_id,
        _hops=incoming.hops,
        **fields,
    )


def answer_id(incoming: Envelope) -> str:
    """A new id for a REPLY (and its chunks) to `incoming`. It names the message it answers,
    so that the server can still deliver the answer should a broker send it back without
    anything else that says so (the described system's broker does)."""
    return answer_message_id(incoming.sender_id, incoming.message_id)


def reply(
    incoming: Envelope,
    agent_id: str,
    text: str,
    message_id: str | None = None,
    *,
    chunks: int = 0,
    calls: list[dict[str, Any]] | None = None,
) -> Envelope:
    """The final REPLY; after a stream it reuses the chunks' message_id, has the whole text and
    says how many chunks came before it (metadata `chunk_count`), so that the server can hold
    it until every chunk has reached the frontend. `calls`: the agent's calls to other agents
    made for it (metadata `calls`, see sdk/calls.py)."""
    metadata: dict[str, Any] = {CHUNK_COUNT_KEY: str(chunks)} if chunks else {}
    if calls:
        metadata["calls"] = calls
    return _answer(
        incoming,
        agent_id,
        MessageType.REPLY,
        message_id or answer_id(incoming),
        text_payload=text,
        metadata=metadata or None,
    )


def chunk(incoming: Envelope, agent_id: str, message_id: str, seq: int, delta: str) -> Envelope:
    """One REPLY_CHUNK of a streamed reply."""
    return _answer(
        incoming, agent_id, MessageType.REPLY_CHUNK, message_id, seq=seq, text_delta=delta
    )


def error(incoming: Envelope, agent_id: str, code: ErrorCode, text: str) -> Envelope:
    """An ERROR about the incoming message, for its sender."""
    return error_envelope(
        sender_id=agent_id,
        receiver_id=incoming.sender_id,
        code=code,
        text=text,
        in_reply_to=incoming.message_id,
        conversation_id=incoming.conversation_id,
        client_id=incoming.client_id,
        server_id=incoming.server_id,
        hops=incoming.hops,
        # Published for the broker to route, like any answer.
        routing_status=RoutingStatus.PENDING,
        message_id=answer_message_id(incoming.sender_id, incoming.message_id, error_code=code),
    )


def call_failed(incoming: Envelope, agent_id: str, exc: CallFailed) -> Envelope:
    """The ERROR for the incoming message when a call its handler made failed and the handler
    let it through: the call's own code (a cycle, an agent offline, ...), not just internal."""
    try:
        code = ErrorCode(exc.error_code)
    except ValueError:
        code = ErrorCode.INTERNAL
    asked = f" asked {exc.agent_id}" if exc.agent_id else ""
    return error(incoming, agent_id, code, f"Agent {agent_id}{asked} and got no answer: {exc.text}")
