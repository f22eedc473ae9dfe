"""The wire contract as types: envelopes, AgentInfo, vocabularies and the JSON codec. No I/O."""

from agentcomm.protocol.codec import (
    decode_envelope,
    encode_for_bus,
    encode_for_client,
    parse_json_object,
)
from agentcomm.protocol.errors import ProtocolError
from agentcomm.protocol.models import (
    AgentInfo,
    AgentStatusUpdate,
    Envelope,
    RegisterFrontend,
    RegisterFrontendResponse,
)
from agentcomm.protocol.vocabulary import (
    AgentState,
    ErrorCode,
    MessageType,
    RoutingStatus,
)

__all__ = [
    "AgentInfo",
    "AgentState",
    "AgentStatusUpdate",
    "Envelope",
    "ErrorCode",
    "MessageType",
    "ProtocolError",
    "RegisterFrontend",
    "RegisterFrontendResponse",
    "RoutingStatus",
    "decode_envelope",
    "encode_for_bus",
    "encode_for_client",
    "parse_json_object",
]
