"""Client channels to the hub's gRPC port, presenting a token on every call when one is set."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import grpc

ChannelOptions = Sequence[tuple[str, Any]]


def _with_token(details: grpc.aio.ClientCallDetails, header: tuple[str, str]) -> Any:
    return grpc.aio.ClientCallDetails(
        details.method,
        details.timeout,
        grpc.aio.Metadata(*(details.metadata or ()), header),
        details.credentials,
        details.wait_for_ready,
    )


# grpc.aio files each interceptor under one call kind only, so unary and streaming calls need
# an interceptor object each.
class _UnaryBearer(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, header: tuple[str, str]) -> None:
        self._header = header

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(_with_token(client_call_details, self._header), request)


class _StreamBearer(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, header: tuple[str, str]) -> None:
        self._header = header

    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(_with_token(client_call_details, self._header), request)


def open_channel(target: str, *, token: str = "", options: ChannelOptions = ()) -> grpc.aio.Channel:
    """An insecure channel that adds `authorization: Bearer <token>` to every call."""
    header = ("authorization", f"Bearer {token}")
    interceptors: list[Any] | None = (
        [_UnaryBearer(header), _StreamBearer(header)] if token else None
    )
    return grpc.aio.insecure_channel(target, options=list(options), interceptors=interceptors)
