"""The closed vocabularies of the wire contract: message types, routing states, error codes."""

from __future__ import annotations

from enum import StrEnum


class MessageType(StrEnum):
    # Chat traffic.
    TEXT = "TEXT"
    REPLY = "REPLY"
    REPLY_CHUNK = "REPLY_CHUNK"
    SYSTEM = "SYSTEM"
    ERROR = "ERROR"
    CANCEL = "CANCEL"
    # Frontend session control.
    REGISTER_FRONTEND = "REGISTER_FRONTEND"
    REGISTER_FRONTEND_RESPONSE = "REGISTER_FRONTEND_RESPONSE"
    REQUEST_AGENT_STATUS = "REQUEST_AGENT_STATUS"
    AGENT_STATUS_UPDATE = "AGENT_STATUS_UPDATE"
    # A registered frontend's fresh token, before the one it registered with expires.
    REFRESH_TOKEN = "REFRESH_TOKEN"
    REFRESH_TOKEN_RESPONSE = "REFRESH_TOKEN_RESPONSE"
    # A conversation's stored messages after a seq, and the page that answers it.
    REQUEST_HISTORY = "REQUEST_HISTORY"
    HISTORY = "HISTORY"
    # Out-of-band notices on the bus.
    SERVER_AVAILABLE = "SERVER_AVAILABLE"
    SERVER_UNAVAILABLE = "SERVER_UNAVAILABLE"
    REGISTER_BROKER = "REGISTER_BROKER"
    CLIENT_DISCONNECTED = "CLIENT_DISCONNECTED"
    # Between the hubs of one cluster, on the bus only (protocol/cluster.py).
    HUB_PRESENCE = "HUB_PRESENCE"
    HUB_COMMAND = "HUB_COMMAND"
    HUB_COMMAND_RESULT = "HUB_COMMAND_RESULT"


CHAT_TYPES = frozenset(
    {
        MessageType.TEXT,
        MessageType.REPLY,
        MessageType.REPLY_CHUNK,
        MessageType.SYSTEM,
        MessageType.ERROR,
        MessageType.CANCEL,
    }
)

# What a frontend may send after registering.
FRONTEND_SENDABLE = frozenset(
    {
        MessageType.TEXT,
        MessageType.REQUEST_AGENT_STATUS,
        MessageType.CANCEL,
        MessageType.REGISTER_FRONTEND,
        MessageType.REFRESH_TOKEN,
        MessageType.REQUEST_HISTORY,
    }
)

# What an agent may publish towards the broker: its answers, and (an addition) a TEXT that
# asks another agent and the CANCEL that stops it.
AGENT_SENDABLE = frozenset(
    {
        MessageType.REPLY,
        MessageType.REPLY_CHUNK,
        MessageType.SYSTEM,
        MessageType.ERROR,
        MessageType.TEXT,
        MessageType.CANCEL,
    }
)

# Answers that close a frontend's TEXT: exactly one of these ends every accepted message.
FINAL_ANSWER_TYPES = frozenset({MessageType.REPLY, MessageType.ERROR})


class RoutingStatus(StrEnum):
    PENDING = "pending"
    ROUTED = "routed"
    DELIVERED = "delivered"
    ERROR = "error"


class ErrorCode(StrEnum):
    INVALID_JSON = "invalid_json"
    INVALID_MESSAGE = "invalid_message"
    UNSUPPORTED_TYPE = "unsupported_type"
    NOT_REGISTERED = "not_registered"
    ALREADY_REGISTERED = "already_registered"
    TOO_LARGE = "too_large"
    RATE_LIMITED = "rate_limited"
    UNAUTHORIZED = "unauthorized"
    NO_AGENT_AVAILABLE = "no_agent_available"
    AGENT_OFFLINE = "agent_offline"
    UNKNOWN_RECEIVER = "unknown_receiver"
    BUS_UNAVAILABLE = "bus_unavailable"
    HOP_LIMIT = "hop_limit"
    CANCELLED = "cancelled"
    INTERNAL = "internal"
    # An accepted TEXT had no answer at all within ANSWER_TIMEOUT.
    ANSWER_TIMEOUT = "answer_timeout"
    # Additions.
    UNKNOWN_MESSAGE = "unknown_message"  # a CANCEL of a TEXT this server does not know
    DUPLICATE_MESSAGE_ID = "duplicate_message_id"  # a TEXT re-using an answered id
    STREAM_INCOMPLETE = "stream_incomplete"  # a streamed reply that could not be put in order
    # An outside A2A agent behind `agentcomm a2a-bridge` failed the task, or cannot be reached.
    REMOTE_FAILED = "remote_failed"
    REMOTE_UNAVAILABLE = "remote_unavailable"
    # History (REQUEST_HISTORY): no such conversation of this user; the messages after that
    # seq were removed by retention (reload from the first kept one); history off or down.
    UNKNOWN_CONVERSATION = "unknown_conversation"
    UNRECOVERABLE = "unrecoverable"
    HISTORY_UNAVAILABLE = "history_unavailable"
    CALL_CYCLE = "call_cycle"  # an agent asked itself, or an agent already waiting in the chain
    TOO_MANY_CALLS = "too_many_calls"  # an agent's calls in flight are at its limit
    # A TEXT with metadata.multitask "reject" while its conversation's answer still runs.
    CONVERSATION_BUSY = "conversation_busy"


class AgentState(StrEnum):
    """Presence of an agent as frontends and brokers see it."""

    ONLINE = "online"
    BUSY = "busy"
    PAUSED = "paused"
    OFFLINE = "offline"


class ClientType(StrEnum):
    FRONTEND = "frontend"
    AGENT = "agent"
    BROKER = "broker"


# The receiver a broker uses when it means "whoever sent this" (the described system's broker).
SERVER_RECEIVER = "server"
MAX_HOPS = 16
