"""The Dispatcher: replies, streams, errors, cancellation, de-duplication, pausing, draining."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from agentcomm.protocol import Envelope, ErrorCode, MessageType, RoutingStatus
from agentcomm.sdk import HandlingAborted, Message, PublishFailed
from agentcomm.sdk.dispatcher import Dispatcher
from agentcomm.sdk.message import MessageHandler

WAIT = 5.0


def text(message_id: str = "m1", body: str = "hello", sender: str = "web_abc") -> Envelope:
    return Envelope(
        message_type=MessageType.TEXT,
        message_id=message_id,
        sender_id=sender,
        receiver_id="agent1",
        text_payload=body,
        conversation_id="conv1",
        routing_status=RoutingStatus.DELIVERED,
        _client_id=sender,
        _server_id="server_1",
        _hops=2,
    )


def cancel(target: str, sender: str = "web_abc") -> Envelope:
    return Envelope(
        message_type=MessageType.CANCEL,
        sender_id=sender,
        in_reply_to_message_id=target,
    )


class Outbox:
    """The publish side: records envelopes; can be told to fail."""

    def __init__(self) -> None:
        self.sent: asyncio.Queue[Envelope] = asyncio.Queue()
        self.fail_with: Exception | None = None

    async def publish(self, envelope: Envelope) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        await self.sent.put(envelope)

    async def next(self) -> Envelope:
        async with asyncio.timeout(WAIT):
            return await self.sent.get()

    def drained(self) -> list[Envelope]:
        items = []
        while not self.sent.empty():
            items.append(self.sent.get_nowait())
        return items


def make(
    handler: MessageHandler,
    outbox: Outbox,
    *,
    concurrency: int = 16,
    is_paused: Callable[[], bool] = lambda: False,
    on_change: Callable[[], None] = lambda: None,
) -> Dispatcher:
    return Dispatcher(
        handler,
        outbox.publish,
        agent_id="agent1",
        concurrency=concurrency,
        is_paused=is_paused,
        on_change=on_change,
    )


async def within(awaitable: Awaitable[object]) -> None:
    async with asyncio.timeout(WAIT):
        await awaitable


async def echo(message: Message) -> str:
    return f"echo: {message.text}"


async def test_a_returned_string_becomes_one_reply_to_the_sender() -> None:
    outbox = Outbox()
    dispatcher = make(echo, outbox)
    await within(dispatcher.handle(text()))
    reply = await outbox.next()
    assert reply.message_type is MessageType.REPLY
    assert reply.text_payload == "echo: hello"
    assert reply.sender_id == "agent1"
    assert reply.receiver_id == "web_abc"
    assert reply.in_reply_to_message_id == "m1"
    assert reply.conversation_id == "conv1"
    assert reply.routing_status is RoutingStatus.PENDING
    assert reply.send_timestamp
    assert reply.message_id != "m1"
    assert (reply.client_id, reply.server_id, reply.hops) == ("web_abc", "server_1", 2)
    assert dispatcher.stats.handled == 1
    assert outbox.drained() == []


async def test_a_generator_streams_chunks_then_the_whole_reply_under_one_id() -> None:
    async def words(message: Message) -> AsyncIterator[str]:
        for part in ["one ", "", "two ", "three"]:
            yield part

    outbox = Outbox()
    await within(make(words, outbox).handle(text()))
    sent = outbox.drained()
    chunks, final = sent[:-1], sent[-1]
    assert [c.message_type for c in chunks] == [MessageType.REPLY_CHUNK] * 3
    assert [c.seq for c in chunks] == [0, 1, 2]  # the empty piece uses no number
    assert [c.text_delta for c in chunks] == ["one ", "two ", "three"]
    assert {c.message_id for c in chunks} == {final.message_id}
    assert all(c.in_reply_to_message_id == "m1" for c in chunks)
    assert final.message_type is MessageType.REPLY
    assert final.text_payload == "one two three"


async def test_a_raising_handler_becomes_an_internal_error_and_the_message_is_done() -> None:
    calls = 0

    async def broken(message: Message) -> str:
        nonlocal calls
        calls += 1
        raise ValueError("secret detail")

    outbox = Outbox()
    dispatcher = make(broken, outbox)
    await within(dispatcher.handle(text()))
    error = await outbox.next()
    assert error.message_type is MessageType.ERROR
    assert error.error_code == ErrorCode.INTERNAL.value
    assert error.in_reply_to_message_id == "m1"
    assert error.receiver_id == "web_abc"
    assert "ValueError" in (error.text_payload or "")
    assert "secret detail" not in (error.text_payload or "")
    # A redelivery of the same message is not handled again.
    await within(dispatcher.handle(text()))
    assert calls == 1
    assert dispatcher.stats.failed == 1


async def test_a_stream_that_fails_half_way_ends_with_an_error() -> None:
    async def stumbles(message: Message) -> AsyncIterator[str]:
        yield "first "
        raise RuntimeError("boom")

    outbox = Outbox()
    await within(make(stumbles, outbox).handle(text()))
    chunk, error = outbox.drained()
    assert chunk.message_type is MessageType.REPLY_CHUNK
    assert error.message_type is MessageType.ERROR
    assert error.error_code == ErrorCode.INTERNAL.value


@pytest.mark.parametrize("result", [None, 42])
async def test_a_handler_returning_something_else_than_str_is_an_error(result: object) -> None:
    async def wrong(message: Message) -> str:
        return result  # type: ignore[return-value]

    outbox = Outbox()
    await within(make(wrong, outbox).handle(text()))
    assert (await outbox.next()).error_code == ErrorCode.INTERNAL.value


async def test_cancel_stops_the_handler_and_answers_cancelled() -> None:
    started = asyncio.Event()
    was_cancelled = asyncio.Event()

    async def slow(message: Message) -> str:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            was_cancelled.set()
            raise
        return "never"

    outbox = Outbox()
    dispatcher = make(slow, outbox)
    handling = asyncio.create_task(dispatcher.handle(text()))
    await within(started.wait())
    assert dispatcher.in_flight == 1
    await within(dispatcher.handle(cancel("m1")))
    await within(handling)  # returns: the TEXT is finished and may be acked
    assert was_cancelled.is_set()
    error = await outbox.next()
    assert error.message_type is MessageType.ERROR
    assert error.error_code == ErrorCode.CANCELLED.value
    assert error.in_reply_to_message_id == "m1"
    assert error.receiver_id == "web_abc"
    assert dispatcher.in_flight == 0
    assert dispatcher.stats.cancelled == 1


async def test_cancel_in_the_middle_of_a_stream() -> None:
    first_sent = asyncio.Event()

    async def endless(message: Message) -> AsyncIterator[str]:
        yield "a "
        first_sent.set()
        await asyncio.Event().wait()
        yield "never"

    outbox = Outbox()
    dispatcher = make(endless, outbox)
    handling = asyncio.create_task(dispatcher.handle(text()))
    await within(first_sent.wait())
    assert dispatcher.cancel("m1")
    await within(handling)
    chunk, error = outbox.drained()
    assert chunk.seq == 0
    assert error.error_code == ErrorCode.CANCELLED.value


async def test_a_cancel_from_someone_else_is_ignored() -> None:
    release = asyncio.Event()
    started = asyncio.Event()

    async def waits(message: Message) -> str:
        started.set()
        await release.wait()
        return "done"

    outbox = Outbox()
    dispatcher = make(waits, outbox)
    handling = asyncio.create_task(dispatcher.handle(text()))
    await within(started.wait())
    await within(dispatcher.handle(cancel("m1", sender="web_other")))
    release.set()
    await within(handling)
    assert (await outbox.next()).message_type is MessageType.REPLY


async def test_a_cancel_that_overtakes_its_text_cancels_it_on_arrival() -> None:
    called = False

    async def handler(message: Message) -> str:
        nonlocal called
        called = True
        return "x"

    outbox = Outbox()
    dispatcher = make(handler, outbox)
    await within(dispatcher.handle(cancel("m1")))
    await within(dispatcher.handle(text()))
    assert not called
    assert (await outbox.next()).error_code == ErrorCode.CANCELLED.value


async def test_a_cancel_for_a_finished_message_changes_nothing() -> None:
    outbox = Outbox()
    dispatcher = make(echo, outbox)
    await within(dispatcher.handle(text()))
    await within(dispatcher.handle(cancel("m1")))
    await within(dispatcher.handle(text()))  # a redelivery: still only the one reply
    assert [e.message_type for e in outbox.drained()] == [MessageType.REPLY]


async def test_a_redelivery_during_handling_waits_for_the_first_and_is_not_handled_twice() -> None:
    release = asyncio.Event()
    started = asyncio.Event()
    calls = 0

    async def waits(message: Message) -> str:
        nonlocal calls
        calls += 1
        started.set()
        await release.wait()
        return "once"

    outbox = Outbox()
    dispatcher = make(waits, outbox)
    first = asyncio.create_task(dispatcher.handle(text()))
    await within(started.wait())
    second = asyncio.create_task(dispatcher.handle(text()))
    await asyncio.sleep(0)
    assert not second.done()
    release.set()
    await within(asyncio.gather(first, second))
    assert calls == 1
    assert [e.text_payload for e in outbox.drained()] == ["once"]
    assert dispatcher.stats.duplicates == 1


async def test_a_paused_agent_refuses_new_messages_with_an_error() -> None:
    called = False

    async def handler(message: Message) -> str:
        nonlocal called
        called = True
        return "x"

    outbox = Outbox()
    dispatcher = make(handler, outbox, is_paused=lambda: True)
    await within(dispatcher.handle(text()))
    error = await outbox.next()
    assert not called
    assert error.error_code == ErrorCode.AGENT_OFFLINE.value
    assert "paused" in (error.text_payload or "")
    assert dispatcher.stats.refused == 1


async def test_no_more_than_concurrency_handlers_run_at_once() -> None:
    running = 0
    peak = 0
    release = asyncio.Event()
    two_running = asyncio.Event()

    async def handler(message: Message) -> str:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if running == 2:
            two_running.set()
        await release.wait()
        running -= 1
        return message.text

    outbox = Outbox()
    dispatcher = make(handler, outbox, concurrency=2)
    tasks = [asyncio.create_task(dispatcher.handle(text(f"m{i}"))) for i in range(5)]
    await within(two_running.wait())
    for _ in range(5):
        await asyncio.sleep(0)
    assert peak == 2
    assert dispatcher.in_flight == 5  # taken, three of them waiting for a slot
    release.set()
    await within(asyncio.gather(*tasks))
    assert peak == 2
    assert len(outbox.drained()) == 5


async def test_a_failed_publish_gives_the_message_back_for_a_later_retry() -> None:
    outbox = Outbox()
    outbox.fail_with = ConnectionError("bus down")
    dispatcher = make(echo, outbox)
    with pytest.raises(PublishFailed):
        await within(dispatcher.handle(text()))
    outbox.fail_with = None
    await within(dispatcher.handle(text()))  # the redelivery is handled, not skipped
    assert (await outbox.next()).text_payload == "echo: hello"


async def test_after_close_intake_new_messages_are_given_back() -> None:
    outbox = Outbox()
    dispatcher = make(echo, outbox)
    dispatcher.close_intake()
    with pytest.raises(HandlingAborted):
        await within(dispatcher.handle(text()))
    assert outbox.drained() == []


async def test_drain_waits_for_quick_handlers_and_aborts_slow_ones_without_answering() -> None:
    release_quick = asyncio.Event()
    both_started = asyncio.Event()
    started = 0

    async def handler(message: Message) -> str:
        nonlocal started
        started += 1
        if started == 2:
            both_started.set()
        if message.text == "quick":
            await release_quick.wait()
            return "quick done"
        await asyncio.Event().wait()
        return "never"

    outbox = Outbox()
    dispatcher = make(handler, outbox)
    quick = asyncio.create_task(dispatcher.handle(text("q", "quick")))
    slow = asyncio.create_task(dispatcher.handle(text("s", "slow")))
    await within(both_started.wait())
    release_quick.set()
    aborted = await asyncio.wait_for(dispatcher.drain(0.2), WAIT)
    assert aborted == 1
    await within(quick)
    with pytest.raises(HandlingAborted):
        await within(slow)
    assert [e.text_payload for e in outbox.drained()] == ["quick done"]


async def test_on_change_follows_messages_in_progress() -> None:
    counts: list[int] = []
    dispatcher: Dispatcher

    def changed() -> None:
        counts.append(dispatcher.in_flight)

    outbox = Outbox()
    dispatcher = make(echo, outbox, on_change=changed)
    await within(dispatcher.handle(text()))
    assert counts == [1, 0]


async def test_on_change_reports_only_turning_busy_and_idle() -> None:
    counts: list[int] = []
    dispatcher: Dispatcher
    release = asyncio.Event()

    def changed() -> None:
        counts.append(dispatcher.in_flight)

    started: list[str] = []
    all_started = asyncio.Event()

    async def held(message: Message) -> str:
        started.append(message.message_id)
        if len(started) == 3:
            all_started.set()
        await release.wait()
        return message.text

    outbox = Outbox()
    dispatcher = make(held, outbox, on_change=changed)
    handling = [asyncio.create_task(dispatcher.handle(text(f"m{n}"))) for n in range(3)]
    await within(all_started.wait())
    assert dispatcher.in_flight == 3
    release.set()
    await within(asyncio.gather(*handling))
    # Three messages at once: one change to busy, one back to idle, none in between.
    assert counts == [1, 0]


async def test_a_handler_that_swallows_its_cancellation_leaves_the_caller_uncancelled() -> None:
    started = asyncio.Event()

    async def stubborn(message: Message) -> str:
        started.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(WAIT)
        return "done anyway"

    outbox = Outbox()
    dispatcher = make(stubborn, outbox)
    cancelling_after: list[int] = []

    async def transport() -> None:
        # Stands for the transport's task for this message, which goes on to ack it.
        await dispatcher.handle(text())
        task = asyncio.current_task()
        assert task is not None
        cancelling_after.append(task.cancelling())
        await asyncio.sleep(0)

    handling = asyncio.create_task(transport())
    await within(started.wait())
    await dispatcher.handle(cancel("m1"))
    await within(handling)
    assert cancelling_after == [0]
    assert [e.text_payload for e in outbox.drained()] == ["done anyway"]


async def test_other_message_types_are_acked_and_ignored() -> None:
    calls: list[str] = []

    async def handler(message: Message) -> str:
        calls.append(message.text)
        return "x"

    outbox = Outbox()
    dispatcher = make(handler, outbox)
    reply = Envelope(message_type=MessageType.REPLY, sender_id="agent2", text_payload="hi")
    await within(dispatcher.handle(reply))
    assert calls == []
    assert outbox.drained() == []
