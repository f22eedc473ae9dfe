"""Streamed pieces merged into fewer chunks (`stream_merge_ms`): what piles up behind a chunk on
its way leaves as one; nothing is lost, reordered or sent after a failure or a cancel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from agentcomm.protocol import ErrorCode, MessageType
from agentcomm.sdk import Message, PublishFailed
from agentcomm.sdk.dispatcher import Dispatcher
from agentcomm.sdk.merging import stream_merged
from tests.unit.test_sdk_dispatcher import Outbox, text, within

WAIT = 5.0


class Sends:
    """Records chunks; the first one waits for `gate` (a chunk on its way)."""

    def __init__(self) -> None:
        self.chunks: list[tuple[int, str]] = []
        self.gate = asyncio.Event()
        self.first = asyncio.Event()

    async def __call__(self, seq: int, delta: str) -> None:
        self.chunks.append((seq, delta))
        if seq == 0:
            self.first.set()
            await self.gate.wait()


async def test_pieces_yielded_while_a_chunk_is_on_its_way_leave_together() -> None:
    sends = Sends()

    async def parts() -> AsyncIterator[str]:
        yield "a "
        await sends.first.wait()
        yield "b "
        yield ""
        yield "c "
        sends.gate.set()

    async with asyncio.timeout(WAIT):
        whole, count = await stream_merged(parts(), sends, 0.0)
    assert sends.chunks == [(0, "a "), (1, "b c ")]
    assert (whole, count) == ("a b c ", 2)


async def test_without_a_backlog_every_piece_is_its_own_chunk() -> None:
    sent: list[tuple[int, str]] = []
    went = asyncio.Event()

    async def send(seq: int, delta: str) -> None:
        sent.append((seq, delta))
        went.set()

    async def parts() -> AsyncIterator[str]:
        for piece in ("x", "y", "z"):
            yield piece
            # The sender has sent this piece before the next one comes.
            await went.wait()
            went.clear()

    async with asyncio.timeout(WAIT):
        whole, count = await stream_merged(parts(), send, 0.0)
    assert sent == [(0, "x"), (1, "y"), (2, "z")]
    assert (whole, count) == ("xyz", 3)


async def test_a_window_gathers_pieces_and_the_end_of_the_stream_cuts_it_short() -> None:
    sent: list[tuple[int, str]] = []

    async def send(seq: int, delta: str) -> None:
        sent.append((seq, delta))

    async def parts() -> AsyncIterator[str]:
        yield "a"
        await asyncio.sleep(0)
        yield "b"
        await asyncio.sleep(0)
        yield "c"

    # A window far longer than the test may take: only the end of the stream releases it.
    async with asyncio.timeout(WAIT):
        whole, count = await stream_merged(parts(), send, 60.0)
    assert sent == [(0, "abc")]
    assert (whole, count) == ("abc", 1)


async def test_a_large_backlog_is_split_below_the_chunk_size_limit() -> None:
    sent: list[str] = []

    async def send(seq: int, delta: str) -> None:
        sent.append(delta)

    async def parts() -> AsyncIterator[str]:
        for _ in range(10):
            yield "abcd"

    async with asyncio.timeout(WAIT):
        whole, _ = await stream_merged(parts(), send, 0.0, max_chars=10)
    assert all(len(chunk) <= 10 for chunk in sent)
    assert "".join(sent) == whole == "abcd" * 10


async def test_a_failed_send_ends_the_stream_with_its_error() -> None:
    async def send(seq: int, delta: str) -> None:
        raise PublishFailed("bus down")

    async def parts() -> AsyncIterator[str]:
        for _ in range(1000):
            yield "t "
            await asyncio.sleep(0)

    with pytest.raises(PublishFailed):
        async with asyncio.timeout(WAIT):
            await stream_merged(parts(), send, 0.0)


async def test_a_piece_that_is_not_text_is_refused() -> None:
    async def send(seq: int, delta: str) -> None:
        return None

    async def parts() -> AsyncIterator[object]:
        yield 3

    with pytest.raises(TypeError, match="yielded int"):
        async with asyncio.timeout(WAIT):
            await stream_merged(parts(), send, 0.0)


async def test_a_dispatcher_with_merging_sends_fewer_chunks_and_the_whole_reply() -> None:
    async def fast(message: Message) -> AsyncIterator[str]:
        for part in ["one ", "", "two ", "three"]:
            yield part

    outbox = Outbox()
    dispatcher = Dispatcher(fast, outbox.publish, agent_id="agent1", merge_seconds=0.0)
    await within(dispatcher.handle(text()))
    *chunks, final = outbox.drained()
    assert "".join(c.text_delta or "" for c in chunks) == "one two three"
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert final.message_type is MessageType.REPLY
    assert final.text_payload == "one two three"
    assert (final.metadata or {}).get("chunk_count") == str(len(chunks))


async def test_cancel_stops_a_merged_stream() -> None:
    first_sent = asyncio.Event()

    async def endless(message: Message) -> AsyncIterator[str]:
        yield "a "
        first_sent.set()
        await asyncio.Event().wait()
        yield "never"

    outbox = Outbox()
    dispatcher = Dispatcher(endless, outbox.publish, agent_id="agent1", merge_seconds=0.0)
    handling = asyncio.create_task(dispatcher.handle(text()))
    await within(first_sent.wait())
    assert dispatcher.cancel("m1")
    await within(handling)
    sent = outbox.drained()
    assert sent[-1].error_code == ErrorCode.CANCELLED.value
    assert all(m.text_delta != "never" for m in sent)
