"""Shared pieces of the gRPC adapters: caller identity and error mapping."""

from __future__ import annotations

from typing import Any, NoReturn

import grpc

from agentcomm.core.auth import Authenticator, AuthError, Principal, Role, bearer_token
from agentcomm.core.errors import (
    AgentIdTaken,
    AgentOffline,
    CommandTimedOut,
    HubError,
    NotYourAgent,
    UnknownAgent,
)
from agentcomm.core.presence import AgentRegistry
from agentcomm.protocol.errors import ProtocolError
from agentcomm.protocol.ids import is_valid_id

Context = grpc.aio.ServicerContext[Any, Any]

# Agents built on the SDK name their process with this metadata key; others are told apart by
# their connection (peer address).
SESSION_METADATA_KEY = "agentcomm-session"

_HUB_ERROR_CODES: dict[type[HubError], grpc.StatusCode] = {
    UnknownAgent: grpc.StatusCode.NOT_FOUND,
    AgentOffline: grpc.StatusCode.FAILED_PRECONDITION,
    AgentIdTaken: grpc.StatusCode.ALREADY_EXISTS,
    NotYourAgent: grpc.StatusCode.PERMISSION_DENIED,
    CommandTimedOut: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def caller_session(context: Context) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == SESSION_METADATA_KEY and isinstance(value, str) and value:
            return "session:" + value[:128]
    return "peer:" + context.peer()


def declared_session(context: Context) -> str | None:
    """The session the caller names, or None: callers without one are not held to it."""
    for key, value in context.invocation_metadata() or ():
        if key == SESSION_METADATA_KEY and isinstance(value, str) and value:
            return "session:" + value[:128]
    return None


def acting_session(context: Context, auth: Authenticator) -> str | None:
    """The session a caller acting for an agent is held to (None: any may act).

    With AUTH_SECRET set, a token says which agent the caller may act for; a caller that names
    its session is held to it as well. On an open hub nothing else says who a caller is, so
    one that names no session is known by its connection, like the registration it made: work
    for an agent goes only to the session (or the connection) that registered it.
    """
    declared = declared_session(context)
    if declared is not None or auth.enabled:
        return declared
    return caller_session(context)


def status_for(error: HubError | ProtocolError) -> tuple[grpc.StatusCode, str]:
    """The status a call refused with `error` ends with."""
    if isinstance(error, ProtocolError):
        return grpc.StatusCode.INVALID_ARGUMENT, error.text
    return _HUB_ERROR_CODES.get(type(error), grpc.StatusCode.FAILED_PRECONDITION), str(error)


def ownership_refusal(
    registry: AgentRegistry, agent_id: str, session: str | None
) -> tuple[grpc.StatusCode, str] | None:
    """Why a caller may not act for `agent_id` now (None: it may): the agent must be
    registered, and by the caller's session when the caller names one."""
    try:
        record = registry.require(agent_id)
    except HubError as exc:
        return status_for(exc)
    if session is not None and record.session != session and record.online:
        return (
            grpc.StatusCode.PERMISSION_DENIED,
            f"Agent {agent_id} was registered by another session.",
        )
    return None


async def abort_for(context: Context, error: HubError | ProtocolError) -> NoReturn:
    await context.abort(*status_for(error))


async def require_id(context: Context, value: str, what: str) -> str:
    if not value:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{what} is required.")
    if not is_valid_id(value):
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{what} must be 1-128 characters from [A-Za-z0-9_.:-].",
        )
    return value


async def require_map(
    context: Context,
    values: dict[str, str],
    what: str,
    *,
    max_entries: int = 64,
    max_chars: int = 1024,
) -> dict[str, str]:
    if len(values) > max_entries:
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT, f"{what} may have at most {max_entries} entries."
        )
    for key, value in values.items():
        if not key or len(key) > 128 or len(value) > max_chars:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{what}: keys must be 1-128 characters and values at most {max_chars}.",
            )
    return dict(values)


async def authorize(
    auth: Authenticator, context: Context, role: Role, subject: str | None = None
) -> Principal | None:
    """The caller's principal when authentication is on (None when it is off).

    Aborts with UNAUTHENTICATED for a missing or bad token and PERMISSION_DENIED for a token
    that may not act in `role` (as `subject`, when one is named).
    """
    if not auth.enabled:
        return None
    header = None
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            header = value
    try:
        principal = auth.verify(bearer_token(header))
    except AuthError as exc:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
    if not principal.may_act_as(role, subject):
        who = f" as {subject!r}" if subject else ""
        await context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            f"A {principal.role.value} token for {principal.subject!r} may not act{who} "
            f"as a {role.value}.",
        )
    return principal
