"""Refusals that cost the server nothing: what the HTTP API checks before it reads a body.

FastAPI reads and parses a request's body before any dependency runs, so a 200 MB body
without a token was read whole (and held) before it was refused with 401. This ASGI layer,
in front of the API, refuses a protected path without a valid token before anything is
read; and reads a body itself, within HTTP_BODY_BYTES (413 past it, told by Content-Length
or counted as it arrives) and HTTP_REQUEST_TIMEOUT (408), before the API sees it. Headers
that do not arrive in time are the protocol's business (`server/http/protocol.py`).
"""

from __future__ import annotations

import asyncio
import logging

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentcomm.gateways.a2a.routes import is_gateway_path
from agentcomm.server.http.api import admin_refusal, caller_refusal, is_protected
from agentcomm.server.http.parts import HttpParts

log = logging.getLogger(__name__)

# JSON-RPC's "Invalid Request".
INVALID_REQUEST = -32600
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class TooLarge(Exception):
    """The body is over the limit."""


class RequestGuard:
    def __init__(self, app: ASGIApp, parts: HttpParts) -> None:
        self._app = app
        self._parts = parts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        settings = self._parts.settings
        headers = {name.lower(): value for name, value in scope.get("headers", [])}
        path: str = scope.get("path", "")
        # A2A callers read refusals as JSON-RPC errors (-32600: the request is not acceptable).
        jsonrpc = is_gateway_path(path)
        refusal = None
        if scope.get("method") != "OPTIONS":
            authorization = _text(headers.get(b"authorization"))
            if is_protected(path, settings):
                refusal = admin_refusal(self._parts.auth, authorization)
            elif jsonrpc:
                refusal = caller_refusal(self._parts.auth, authorization)
        if refusal is not None:
            status, detail = refusal
            extra = [(b"www-authenticate", b"Bearer")] if status == 401 else []
            await _respond(send, status, detail, extra, jsonrpc=jsonrpc)
            return
        if scope.get("method") in _BODY_METHODS or b"content-length" in headers:
            limit = settings.http_body_bytes
            declared = _text(headers.get(b"content-length"))
            too_large = f"The request body may have at most {limit} bytes."
            if declared is not None and (not declared.isdigit() or int(declared) > limit):
                await _respond(send, 413, too_large, jsonrpc=jsonrpc)
                return
            try:
                async with asyncio.timeout(settings.http_request_timeout):
                    body = await _read_body(receive, limit)
            except TooLarge:
                await _respond(send, 413, too_large, jsonrpc=jsonrpc)
                return
            except TimeoutError:
                log.info("A request body did not arrive within %g s", settings.http_request_timeout)
                await _respond(
                    send, 408, "The request body did not arrive in time.", jsonrpc=jsonrpc
                )
                return
            if body is None:
                return  # the client went away
            receive = _replay(body, receive)
        await self._app(scope, receive, send)


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole body, or None when the client disconnected first."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise TooLarge
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: only the disconnect

    return replayed


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


async def _respond(
    send: Send,
    status: int,
    detail: str,
    headers: list[tuple[bytes, bytes]] | None = None,
    *,
    jsonrpc: bool = False,
) -> None:
    # FastAPI's shape for an HTTPException, so that clients read one kind of refusal; a
    # JSON-RPC error for A2A callers.
    if jsonrpc:
        error = {"code": INVALID_REQUEST, "message": detail, "data": {"http_status": status}}
        body = orjson.dumps({"jsonrpc": "2.0", "id": None, "error": error})
    else:
        body = orjson.dumps({"detail": detail})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
