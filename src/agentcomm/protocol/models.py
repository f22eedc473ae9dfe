"""Typed messages of the wire contract (PROTOCOL §2-§4). Pure data: no I/O here.

Unknown JSON keys are ignored on input, as the contract asks of every receiver. Fields whose
wire name starts with `_` are internal: they travel on the bus and are stripped before a message
reaches a frontend or an agent.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agentcomm.protocol.ids import ID_PATTERN, new_message_id
from agentcomm.protocol.vocabulary import AgentState, MessageType, RoutingStatus

# Caps on what one message may carry; frames are already bounded by MAX_MESSAGE_BYTES, these
# keep single fields and maps from crowding out everything else.
MAX_NAME_CHARS = 256
MAX_TEXT_CHARS = 1_000_000
MAX_MAP_ENTRIES = 64
MAX_MAP_VALUE_CHARS = 1024
# `metadata` is free-form JSON, but every hop re-encodes it, and encoders stop at a depth of
# about 255: a message nested deeper was accepted here and then failed in every broker, with no
# answer to its sender. Bounded at the edge, far above any real use, so it is refused at once.
MAX_METADATA_DEPTH = 16
MAX_METADATA_ITEMS = 1024

INTERNAL_FIELDS = frozenset({"client_id", "server_id", "hops"})
# On a final REPLY after a stream: how many REPLY_CHUNKs came before it.
CHUNK_COUNT_KEY = "chunk_count"


class WireModel(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=False)


class Envelope(WireModel):
    """A chat message: TEXT, REPLY, REPLY_CHUNK, SYSTEM, ERROR or CANCEL."""

    message_type: MessageType
    message_id: str = Field(default_factory=new_message_id, pattern=ID_PATTERN)
    sender_id: str | None = Field(default=None, max_length=128)
    receiver_id: str | None = Field(default=None, max_length=128)
    text_payload: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)
    send_timestamp: str | None = Field(default=None, max_length=64)
    in_reply_to_message_id: str | None = Field(default=None, max_length=128)
    conversation_id: str | None = Field(default=None, max_length=128)
    routing_status: RoutingStatus | None = None
    error_code: str | None = Field(default=None, max_length=64)
    # Why routing failed, in words: the described system's brokers and UI use this key. The
    # server puts the sentence of an ERROR on the `error` status echo too, for such a UI.
    routing_status_message: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)
    metadata: dict[str, Any] | None = Field(default=None, max_length=MAX_MAP_ENTRIES)
    # REPLY_CHUNK: position in the stream and the text it adds.
    seq: int | None = Field(default=None, ge=0)
    text_delta: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)
    # Internal routing fields, never shown to frontends or agents.
    client_id: str | None = Field(default=None, alias="_client_id", max_length=128)
    server_id: str | None = Field(default=None, alias="_server_id", max_length=128)
    hops: int = Field(default=0, alias="_hops", ge=0)

    @field_validator("metadata")
    @classmethod
    def _bounded_metadata(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            check_json_shape(value, "metadata")
        return value


class AgentInfo(WireModel):
    agent_id: str
    agent_name: str
    is_online: bool
    last_seen: str
    status: AgentState
    capabilities: dict[str, str] = Field(default_factory=dict)
    in_flight: int = 0


class RegisterFrontend(WireModel):
    message_type: MessageType
    message_id: str | None = Field(default=None, pattern=ID_PATTERN)
    frontend_name: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    frontend_id: str | None = Field(default=None, pattern=ID_PATTERN)
    resume_token: str | None = Field(default=None, max_length=256)
    token: str | None = Field(default=None, max_length=8192)
    capabilities: dict[str, Any] = Field(default_factory=dict, max_length=MAX_MAP_ENTRIES)
    # The user this frontend belongs to, when the hub is open (with AUTH_SECRET the token's
    # `sub` is the user, and this is ignored): its conversations are kept under that user.
    user_id: str | None = Field(default=None, pattern=ID_PATTERN)

    @field_validator("capabilities")
    @classmethod
    def _bounded_capabilities(cls, value: dict[str, Any]) -> dict[str, Any]:
        check_json_shape(value, "capabilities")
        return value


class RegisterFrontendResponse(WireModel):
    message_type: MessageType = MessageType.REGISTER_FRONTEND_RESPONSE
    message_id: str = Field(default_factory=new_message_id)
    status: str = "success"
    frontend_id: str
    frontend_name: str
    message: str
    resume_token: str
    send_timestamp: str | None = None


class RequestHistory(WireModel):
    """A frontend asks for the stored messages of one of its user's conversations."""

    message_type: MessageType
    message_id: str | None = Field(default=None, pattern=ID_PATTERN)
    conversation_id: str = Field(min_length=1, max_length=128)
    # Messages with a seq above this one (0: from the start).
    after_seq: int = Field(default=0, ge=0)
    limit: int = Field(default=100, ge=1, le=1000)


class RefreshToken(WireModel):
    message_type: MessageType
    message_id: str | None = Field(default=None, pattern=ID_PATTERN)
    token: str = Field(min_length=1, max_length=8192)


class RefreshTokenResponse(WireModel):
    message_type: MessageType = MessageType.REFRESH_TOKEN_RESPONSE
    message_id: str = Field(default_factory=new_message_id)
    in_reply_to_message_id: str | None = None
    status: str = "success"
    # When the session ends now, unless refreshed again (ISO 8601 UTC; absent: never).
    expires_at: str | None = None


class AgentStatusUpdate(WireModel):
    message_type: MessageType = MessageType.AGENT_STATUS_UPDATE
    message_id: str = Field(default_factory=new_message_id)
    agents: list[AgentInfo]
    is_full_update: bool
    send_timestamp: str | None = None
    # On every page of a full list but the last: more agents follow in the next updates.
    more_pages: bool | None = None


class ServerAdvertisement(WireModel):
    """SERVER_AVAILABLE / SERVER_UNAVAILABLE on server_advertisement_queue."""

    message_type: MessageType
    message_id: str = Field(default_factory=new_message_id)
    server_id: str
    websocket_url: str
    grpc_address: str
    timestamp: str


class RegisterBrokerNotice(WireModel):
    message_type: MessageType
    message_id: str | None = None
    broker_id: str = Field(min_length=1, pattern=ID_PATTERN)
    broker_name: str = Field(default="", max_length=MAX_NAME_CHARS)


class ClientDisconnectedNotice(WireModel):
    message_type: MessageType
    message_id: str | None = None
    client_id: str = Field(min_length=1, max_length=128)
    client_type: str = Field(default="", max_length=32)


def check_json_shape(value: dict[str, Any], what: str) -> None:
    """Raises ValueError (a sentence naming `what`) when `value` nests deeper than
    MAX_METADATA_DEPTH or holds more than MAX_METADATA_ITEMS values in all. Walked without
    recursion, so that no depth makes the check itself fail."""
    items = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_METADATA_DEPTH:
            raise ValueError(f"{what} may nest at most {MAX_METADATA_DEPTH} levels deep")
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            items += 1
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
        if items > MAX_METADATA_ITEMS:
            raise ValueError(f"{what} may hold at most {MAX_METADATA_ITEMS} values in all")
