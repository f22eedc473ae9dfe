"""The history writer: chat never waits for it, a store that fails degrades it loudly and it
catches up once the store is back, a full queue costs history and is counted."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from agentcomm.history.records import (
    ConversationPage,
    MessagePage,
    MessageStatus,
    NewMessage,
    StoreUnavailable,
)
from agentcomm.history.writer import HistoryWriter
from tests.support.waiting import wait_until


def message(number: int) -> NewMessage:
    return NewMessage(
        user_id="u",
        conversation_id="c",
        message_id=f"m-{number}",
        message_type="TEXT",
        sender_id="web_1",
        receiver_id="echo",
        text="hi",
        status=MessageStatus.ACCEPTED,
        at=float(number),
    )


class FlakyStore:
    """Refuses while `down` is set; keeps what it is given."""

    def __init__(self) -> None:
        self.down = asyncio.Event()
        self.kept: list[str] = []

    async def open(self) -> None:
        if self.down.is_set():
            raise StoreUnavailable("database is down")

    async def close(self) -> None:
        pass

    async def ping(self) -> None:
        pass

    async def append(self, messages: Sequence[NewMessage]) -> list[int | None]:
        if self.down.is_set():
            raise StoreUnavailable("database is down")
        self.kept += [m.message_id for m in messages]
        return list(range(1, len(messages) + 1))

    async def conversations(
        self, user_id: str | None, *, limit: int, before: str | None = None
    ) -> ConversationPage:
        raise NotImplementedError

    async def messages(
        self, user_id: str | None, conversation_id: str, *, after: int, limit: int
    ) -> MessagePage:
        raise NotImplementedError

    async def delete(self, user_id: str | None, conversation_id: str) -> None:
        raise NotImplementedError

    async def expire(self, before: float) -> int:
        raise NotImplementedError


async def test_a_store_that_fails_degrades_history_and_it_catches_up() -> None:
    store = FlakyStore()
    writer = HistoryWriter(store, queue_size=100, linger=0.0)
    await writer.start()
    try:
        store.down.set()
        writer.offer(message(1))
        await wait_until(lambda: writer.status != "ok", timeout=5, what="the writer to degrade")
        assert writer.status.startswith("degraded: ")
        assert "database is down" in writer.status
        store.down.clear()
        writer.offer(message(2))
        await writer.flush(timeout=10)
        assert writer.status == "ok"
        assert store.kept == ["m-1", "m-2"]  # nothing lost while it was down, in order
    finally:
        await writer.stop()


async def test_past_its_bound_the_queue_keeps_nothing_more_and_counts() -> None:
    store = FlakyStore()
    store.down.set()
    writer = HistoryWriter(store, queue_size=3, linger=0.0)
    for number in range(5):
        writer.offer(message(number))  # never waits, even with no writer running
    assert writer.dropped == 2
    await writer.stop()
