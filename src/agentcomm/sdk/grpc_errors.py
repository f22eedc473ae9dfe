"""gRPC statuses as the SDK's errors: retry later, re-register, or give up."""

from __future__ import annotations

import grpc
import grpc.aio

from agentcomm.sdk.errors import AgentError, HubUnavailable, NotRegistered

_UNAVAILABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


class HubRefused(AgentError):
    """The server refused a call as invalid or not allowed."""


def map_status(code: grpc.StatusCode, details: str, call: str) -> AgentError:
    """The SDK error for a call (or a streamed item) that ended with `code`."""
    text = f"{call} failed: {code.name} {details}".strip()
    if code is grpc.StatusCode.NOT_FOUND:
        return NotRegistered(text)
    if code in _UNAVAILABLE_CODES:
        return HubUnavailable(text)
    return HubRefused(text)


def map_rpc_error(exc: grpc.aio.AioRpcError, call: str) -> AgentError:
    return map_status(exc.code(), exc.details() or "", call)
