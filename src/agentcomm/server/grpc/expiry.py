"""Streams end when the token they were opened with expires.

A token is checked when a call starts; a stream (commands, messages, agent status, outputs)
may then stay open for days. With AUTH_SECRET set, each server stream here ends with
UNAUTHENTICATED at its token's `exp`: the client opens it again with a fresh token, as it does
after any lost stream. Unary calls are short and keep the check at their start.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from agentcomm.core.auth import Authenticator, AuthError, bearer_token
from agentcomm.server.grpc.wrapping import WrappingInterceptor

Context = grpc.aio.ServicerContext[Any, Any]

EXPIRED = "The token expired; open the stream again with a fresh one."


def _expiry(auth: Authenticator, context: Context) -> float | None:
    """When the caller's token expires, in event loop time; None without a usable token
    (then the servicer refuses the call itself)."""
    header = None
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            header = value
    try:
        expires_at = auth.verify(bearer_token(header)).expires_at
    except AuthError:
        return None
    if expires_at is None:
        return None
    return asyncio.get_running_loop().time() + (expires_at - time.time())


async def _until(responses: AsyncIterator[Any], deadline: float) -> AsyncIterator[Any]:
    """The responses, until `deadline` passes while the stream waits for the next one."""
    while True:
        try:
            async with asyncio.timeout_at(deadline):
                response = await anext(responses)
        except StopAsyncIteration:
            return
        yield response


def _ending_at_expiry(
    auth: Authenticator, behavior: Callable[..., Any]
) -> Callable[..., AsyncIterator[Any]]:
    # The stubs type a streaming behaviour as a sync iterator; grpc.aio servicers are async
    # generators, which is what this wraps.
    async def bounded(request: Any, context: Context) -> AsyncIterator[Any]:
        deadline = _expiry(auth, context)
        responses = behavior(request, context)
        if deadline is None:
            async for response in responses:
                yield response
            return
        try:
            async for response in _until(responses, deadline):
                yield response
        except TimeoutError:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, EXPIRED)

    return bounded


class EndStreamsAtTokenExpiry(WrappingInterceptor):
    def __init__(self, auth: Authenticator) -> None:
        super().__init__()
        self._auth = auth

    def wrap(self, handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
        if not self._auth.enabled:
            return handler
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _ending_at_expiry(self._auth, handler.unary_stream),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                _ending_at_expiry(self._auth, handler.stream_stream),
                handler.request_deserializer,
                handler.response_serializer,
            )
        return handler
