"""The agent's side of SendOutputs: replies and acks on one stream instead of a call each.

Items are written in batches (whatever was submitted while the previous write was under way
goes out in the next one) and each gets its own result; a caller waits only for its own. When
the stream breaks, every item still waiting fails with the mapped error, and the next item opens
a new stream. A server without SendOutputs fails the stream with UNIMPLEMENTED, which the client
takes as the sign to use the unary calls instead (`StreamUnsupported`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

import grpc
import grpc.aio

from agentcomm.generated import agent_registration_service_pb2 as pb
from agentcomm.sdk.errors import AgentError, HubUnavailable
from agentcomm.sdk.grpc_errors import map_rpc_error

if TYPE_CHECKING:
    from agentcomm.generated.agent_registration_service_pb2_grpc import (
        AgentRegistrationServiceAsyncStub,
    )

log = logging.getLogger(__name__)

# How long a write waits for more items while at least LINGER_BUSY earlier ones await their
# results (the server is busy with this agent then); with fewer, items go at once.
LINGER = 0.002
LINGER_BUSY = 4

_STATUS_BY_NUMBER: Mapping[int, grpc.StatusCode] = MappingProxyType(
    {status.value[0]: status for status in grpc.StatusCode}
)

# The bytes protobuf adds around a field's value (its tag and length), and around an item
# (those of the item, its ref and handled flag, and its two strings): counted generously.
_FIELD_OVERHEAD = 8
_ITEM_OVERHEAD = 40


class StreamUnsupported(AgentError):
    """The server has no SendOutputs (an older version): use SendMessage and AckMessage."""


@dataclass(frozen=True, slots=True)
class OutputResult:
    """The server's answer to one item."""

    code: grpc.StatusCode
    detail: str
    accepted: bool
    acknowledged: bool


class OutputStream:
    """One SendOutputs call for one agent id."""

    def __init__(
        self,
        stub: AgentRegistrationServiceAsyncStub,
        agent_id: str,
        metadata: tuple[tuple[str, str], ...],
        *,
        max_request_bytes: int,
    ) -> None:
        self.agent_id = agent_id
        self.failure: AgentError | None = None
        # Each write is one request; the server ends the stream on one over its limit.
        self._max_request_bytes = max_request_bytes
        self._call = stub.SendOutputs(metadata=metadata)
        self._pending: dict[int, asyncio.Future[OutputResult]] = {}
        self._unsent: list[pb.AgentOutput] = []
        self._wake = asyncio.Event()
        self._next_ref = 1
        self._writer = asyncio.create_task(self._write(), name=f"agent-{agent_id}-outputs-out")
        self._reader = asyncio.create_task(self._read(), name=f"agent-{agent_id}-outputs-in")

    def submit(
        self,
        envelope_json: str = "",
        ack_message_id: str = "",
        *,
        handled: bool = True,
        traceparent: str = "",
    ) -> asyncio.Future[OutputResult]:
        """Queues one item; the future ends with its result, or with the stream's failure."""
        if self.failure is not None:
            raise self.failure
        ref = self._next_ref
        self._next_ref += 1
        future: asyncio.Future[OutputResult] = asyncio.get_running_loop().create_future()
        self._pending[ref] = future
        self._unsent.append(
            pb.AgentOutput(
                ref=ref,
                envelope_json=envelope_json,
                ack_message_id=ack_message_id,
                handled=handled,
                traceparent=traceparent,
            )
        )
        self._wake.set()
        return future

    async def _write(self) -> None:
        try:
            while True:
                await self._wake.wait()
                if len(self._pending) - len(self._unsent) >= LINGER_BUSY:
                    # A moment's wait lets more items share the write.
                    await asyncio.sleep(LINGER)
                self._wake.clear()
                while self._unsent:
                    batch = self._take_batch()
                    await self._call.write(pb.AgentOutputs(agent_id=self.agent_id, items=batch))
        except grpc.aio.AioRpcError as exc:
            self._fail(_stream_error(exc))
        except (grpc.aio.UsageError, asyncio.InvalidStateError) as exc:
            # The call ended under the write; the reader knows why, this is only a fallback.
            self._fail(HubUnavailable(f"SendOutputs ended: {exc}"))

    def _take_batch(self) -> list[pb.AgentOutput]:
        """As many items as fit in one request (the first one always)."""
        size = len(self.agent_id) + _FIELD_OVERHEAD
        count = 0
        for item in self._unsent:
            size += _utf8_size(item.envelope_json) + len(item.ack_message_id) + _ITEM_OVERHEAD
            if count and size > self._max_request_bytes:
                break
            count += 1
        batch, self._unsent = self._unsent[:count], self._unsent[count:]
        return batch

    async def _read(self) -> None:
        try:
            while True:
                response = await self._call.read()
                if response is grpc.aio.EOF:
                    raise HubUnavailable("The server ended the SendOutputs stream.")
                assert isinstance(response, pb.AgentOutputResults)
                for result in response.results:
                    future = self._pending.pop(result.ref, None)
                    if future is not None and not future.done():
                        future.set_result(
                            OutputResult(
                                code=_STATUS_BY_NUMBER.get(result.code, grpc.StatusCode.UNKNOWN),
                                detail=result.detail,
                                accepted=result.accepted,
                                acknowledged=result.acknowledged,
                            )
                        )
        except grpc.aio.AioRpcError as exc:
            self._fail(_stream_error(exc))
        except AgentError as exc:
            self._fail(exc)

    def _fail(self, error: AgentError) -> None:
        if self.failure is None:
            self.failure = error
        self._call.cancel()
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(self.failure)
        self._unsent.clear()

    async def close(self) -> None:
        self._fail(HubUnavailable("The SendOutputs stream was closed."))
        for task in (self._writer, self._reader):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _utf8_size(text: str) -> int:
    # Envelopes are mostly ASCII, whose length is their size without encoding them again.
    return len(text) if text.isascii() else len(text.encode())


def _stream_error(exc: grpc.aio.AioRpcError) -> AgentError:
    if exc.code() is grpc.StatusCode.UNIMPLEMENTED:
        return StreamUnsupported(f"The server has no SendOutputs: {exc.details() or ''}")
    return map_rpc_error(exc, "SendOutputs")
