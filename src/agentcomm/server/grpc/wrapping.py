"""The shape every server interceptor of the hub has: wrap each method's handler once."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc


class WrappingInterceptor(grpc.aio.ServerInterceptor):
    """Hands each method's handler to `wrap` once, and the wrapped handler to every call."""

    def __init__(self) -> None:
        # Wrapped once per method, not per call.
        self._handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def wrap(self, handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
        """The handler calls of this method are served by (`handler` itself: unchanged)."""
        raise NotImplementedError

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = handler_call_details.method
        cached = self._handlers.get(method)
        if cached is not None:
            return cached
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        wrapped = self._handlers[method] = self.wrap(handler)
        return wrapped
