"""A servicer that fails on something unforeseen ends its call INTERNAL with a sentence, never
gRPC's UNKNOWN naming the exception's class; aborts keep their own status."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from agentcomm.server.grpc.malformed import RejectMalformedRequests


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class FakeContext:
    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


def identity(data: bytes) -> bytes:
    return data


async def failing_unary(request: Any, context: Any) -> Any:
    raise ValueError("Maximum serialization depth exceeded in some.library.Class")


async def failing_stream(request: Any, context: Any) -> AsyncIterator[Any]:
    yield b"first"
    raise ValueError("some.library.Class broke")


async def test_an_unforeseen_failure_of_a_unary_call_is_internal_with_a_sentence() -> None:
    handler = grpc.unary_unary_rpc_method_handler(failing_unary, identity, identity)
    wrapped = RejectMalformedRequests().wrap(handler)
    assert wrapped.unary_unary is not None
    with pytest.raises(Aborted) as ended:
        await wrapped.unary_unary(b"request", FakeContext())
    assert ended.value.code is grpc.StatusCode.INTERNAL
    assert "Class" not in ended.value.details
    assert ended.value.details.endswith(".")


async def test_an_unforeseen_failure_of_a_stream_is_internal_after_what_it_sent() -> None:
    handler = grpc.unary_stream_rpc_method_handler(failing_stream, identity, identity)
    wrapped = RejectMalformedRequests().wrap(handler)
    assert wrapped.unary_stream is not None
    received: list[Any] = []

    async def read_all() -> None:
        async for response in wrapped.unary_stream(b"request", FakeContext()):
            received.append(response)

    with pytest.raises(Aborted) as ended:
        await read_all()
    assert received == [b"first"]
    assert ended.value.code is grpc.StatusCode.INTERNAL
