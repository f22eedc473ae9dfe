"""The first frames of a frontend socket: REGISTER_FRONTEND, or a resume, authenticated.

Until a frame registers the socket, anything else is refused and the socket closed (PROTOCOL
§3); a malformed REGISTER_FRONTEND is refused and may be corrected; no registration within
REGISTRATION_TIMEOUT closes it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from agentcomm.core.auth import Authenticator, AuthError, Principal, Role
from agentcomm.core.sessions import FrontendSession
from agentcomm.protocol.codec import (
    decode_register_frontend,
    encode_for_client,
    message_type_of,
    parse_json_object,
    reply_id,
)
from agentcomm.protocol.errors import ProtocolError
from agentcomm.protocol.models import RegisterFrontendResponse
from agentcomm.protocol.timestamps import utc_now_iso
from agentcomm.protocol.vocabulary import ErrorCode, MessageType
from agentcomm.server.ws.close_codes import CLOSE_POLICY
from agentcomm.server.ws.frames import error_frame, refusal_frame
from agentcomm.server.ws.output import SocketLink
from agentcomm.server.ws.parts import FrontendParts

log = logging.getLogger(__name__)

# The next text frame within that many seconds (None: no limit); None when the server is closing
# the socket.
Receive = Callable[[float | None], Awaitable[str | None]]


@dataclass(frozen=True, slots=True)
class Registered:
    session: FrontendSession
    # When the token it registered with expires (seconds since the epoch; None: never).
    token_expires_at: float | None


async def register_frontend(
    parts: FrontendParts, link: SocketLink, receive: Receive, query_token: str | None
) -> Registered | None:
    """The session the socket registered (or resumed); None when it was refused and closed."""
    deadline = asyncio.get_running_loop().time() + parts.settings.registration_timeout
    while True:
        remaining = deadline - asyncio.get_running_loop().time()
        try:
            raw = await receive(max(0.0, remaining))
        except TimeoutError:
            link.send_frame(
                error_frame(
                    ErrorCode.NOT_REGISTERED,
                    "No REGISTER_FRONTEND within the registration timeout.",
                )
            )
            link.close(CLOSE_POLICY)
            return None
        if raw is None:
            return None  # closing (a flood of binary frames)
        try:
            data = parse_json_object(raw)
            message_type = message_type_of(data)
            if message_type is not MessageType.REGISTER_FRONTEND:
                raise ProtocolError(
                    ErrorCode.NOT_REGISTERED,
                    "Register first: the first frame must be REGISTER_FRONTEND.",
                    reply_id(data),
                )
        except ProtocolError as exc:
            # Not a registration attempt at all (PROTOCOL §3): refused and closed.
            log.info("Refused frame before registration: %s", exc.text)
            link.send_frame(refusal_frame(exc))
            link.close(CLOSE_POLICY)
            return None
        try:
            request = decode_register_frontend(data)
            principal = frontend_principal(parts.auth, request.token or query_token)
        except ProtocolError as exc:
            log.info("Refused frame before registration: %s", exc.text)
            link.send_frame(refusal_frame(exc))
            if exc.code is ErrorCode.INVALID_MESSAGE:
                continue  # a malformed REGISTER_FRONTEND may be corrected
            link.close(CLOSE_POLICY)
            return None
        session, resumed = parts.sessions.register(
            link,
            request.frontend_name,
            request.capabilities,
            frontend_id=request.frontend_id,
            resume_token=request.resume_token,
            # With tokens the user is the token's subject; an open hub trusts what it is told.
            user_id=principal.subject if principal is not None else request.user_id,
        )
        response = RegisterFrontendResponse(
            frontend_id=session.frontend_id,
            frontend_name=session.frontend_name,
            message="Session resumed." if resumed else "Registered.",
            resume_token=session.resume_token,
            send_timestamp=utc_now_iso(),
        )
        link.send_frame(encode_for_client(response))
        link.send_frames(parts.presence.listing())
        if request.resume_token:
            # A resume asked for: taken up, or a new session (unknown, expired or wrong token).
            parts.metrics.count_resume("resumed" if resumed else "new_session")
        if resumed:
            parts.sessions.flush_backlog(session)
        log.info(
            "Frontend %s (%s) %s",
            session.frontend_id,
            session.frontend_name,
            "resumed" if resumed else "registered",
        )
        return Registered(session, principal.expires_at if principal is not None else None)


def authenticate_frontend(
    auth: Authenticator, token: str | None, message_id: str | None = None
) -> float | None:
    """When the token expires (None: never, or authentication is off); ProtocolError
    `unauthorized` for a token that may not open (or keep) a frontend session."""
    principal = frontend_principal(auth, token, message_id)
    return principal.expires_at if principal is not None else None


def frontend_principal(
    auth: Authenticator, token: str | None, message_id: str | None = None
) -> Principal | None:
    """Who the token names (None: authentication is off); ProtocolError `unauthorized` for a
    token that may not open (or keep) a frontend session."""
    if not auth.enabled:
        return None
    try:
        principal = auth.verify(token)
    except AuthError as exc:
        raise ProtocolError(ErrorCode.UNAUTHORIZED, str(exc), message_id) from None
    if principal.role not in (Role.FRONTEND, Role.ADMIN):
        raise ProtocolError(
            ErrorCode.UNAUTHORIZED,
            f"A {principal.role.value} token cannot open a frontend session.",
            message_id,
        )
    return principal
