"""Malformed protobuf requests get INVALID_ARGUMENT, not gRPC's UNKNOWN.

grpc.aio parses a request before any servicer code runs, and a parse failure surfaces as
UNKNOWN "Unexpected DecodeError". This interceptor parses requests itself and lets a request
that does not parse reach no servicer: the call ends with INVALID_ARGUMENT saying why. On a
stream of requests, reading one that does not parse raises MalformedRequest in the servicer;
the call then ends the same way once the servicer lets it propagate.

A servicer that fails on something unforeseen would end its call with UNKNOWN and a detail
naming the exception's class (the library's wording): such a call ends with INTERNAL and a
sentence instead, and the failure is logged here with its traceback.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from agentcomm.server.grpc.wrapping import WrappingInterceptor

log = logging.getLogger(__name__)

Deserializer = Callable[[bytes], Any]


class _Malformed:
    def __init__(self, reason: str) -> None:
        self.reason = reason


class MalformedRequest(Exception):
    """A request read from a client's stream did not parse."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _tolerant(deserialize: Deserializer) -> Deserializer:
    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:
            return _Malformed(str(exc) or type(exc).__name__)

    return parse


async def _refuse(request: _Malformed, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    await context.abort(
        grpc.StatusCode.INVALID_ARGUMENT, f"The request is not a valid message: {request.reason}"
    )


async def _failed(context: grpc.aio.ServicerContext[Any, Any]) -> None:
    log.exception("A gRPC call failed")
    await context.abort(
        grpc.StatusCode.INTERNAL, "The server failed on this call; the failure was logged."
    )


def _unary(behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def checked(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if isinstance(request, _Malformed):
            await _refuse(request, context)
        try:
            return await behavior(request, context)
        except grpc.aio.BaseError:
            raise  # an abort: the call ends with the status it names
        except Exception:
            await _failed(context)

    return checked


def _streaming(behavior: Callable[..., Any]) -> Callable[..., AsyncIterator[Any]]:
    # The stubs type a streaming behaviour as a sync iterator; grpc.aio servicers are async
    # generators, which is what this wraps.
    async def checked(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if isinstance(request, _Malformed):
            await _refuse(request, context)
        try:
            async for response in behavior(request, context):
                yield response
        except grpc.aio.BaseError:
            raise
        except Exception:
            await _failed(context)

    return checked


async def _parsed(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, _Malformed):
            raise MalformedRequest(request.reason)
        yield request


def _bidirectional(behavior: Callable[..., Any]) -> Callable[..., AsyncIterator[Any]]:
    async def checked(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            async for response in behavior(_parsed(requests), context):
                yield response
        except MalformedRequest as exc:
            await _refuse(_Malformed(exc.reason), context)
        except grpc.aio.BaseError:
            raise
        except Exception:
            await _failed(context)

    return checked


class RejectMalformedRequests(WrappingInterceptor):
    def wrap(self, handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
        if handler.request_deserializer is None:
            return handler
        parse = _tolerant(handler.request_deserializer)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _unary(handler.unary_unary), parse, handler.response_serializer
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _streaming(handler.unary_stream), parse, handler.response_serializer
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                _bidirectional(handler.stream_stream), parse, handler.response_serializer
            )
        return handler
