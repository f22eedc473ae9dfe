"""The conversation store's contract, run on SQLite and on PostgreSQL alike."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentcomm.history import (
    AmbiguousConversation,
    ConversationNotFound,
    MessageStatus,
    NewMessage,
    StoreUnavailable,
    Unrecoverable,
    database_url,
)
from agentcomm.history.sql import SqlConversationStore

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[SqlConversationStore]:
    if request.param == "sqlite":
        url = database_url("", str(tmp_path))
    else:
        url = database_url(request.getfixturevalue("postgres_database"), "")
    assert url is not None
    opened = SqlConversationStore(url)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


def user() -> str:
    """A user of this test alone: the PostgreSQL database is shared by the run."""
    return f"user-{uuid.uuid4().hex[:10]}"


def text(user_id: str, conversation: str, message_id: str, at: float = 1000.0) -> NewMessage:
    return NewMessage(
        user_id=user_id,
        conversation_id=conversation,
        message_id=message_id,
        message_type="TEXT",
        sender_id="fe-1",
        receiver_id="echo",
        text=f"question {message_id}",
        status=MessageStatus.ACCEPTED,
        at=at,
    )


def reply(
    user_id: str, answers: str, message_id: str, *, error: bool = False, at: float = 1001.0
) -> NewMessage:
    return NewMessage(
        user_id=user_id,
        conversation_id="whatever-the-agent-said",
        message_id=message_id,
        message_type="ERROR" if error else "REPLY",
        sender_id="echo",
        receiver_id="fe-1",
        text=f"answer to {answers}",
        status=MessageStatus.ERROR if error else MessageStatus.FINAL,
        at=at,
        error_code="agent_offline" if error else None,
        answers=answers,
    )


async def test_messages_get_gapless_seqs_in_order(store: SqlConversationStore) -> None:
    alice = user()
    assert await store.append([text(alice, "c1", "m1"), reply(alice, "m1", "r1")]) == [1, 2]
    assert await store.append([text(alice, "c1", "m2"), text(alice, "c2", "m3")]) == [3, 1]
    assert await store.append([reply(alice, "m2", "r2", error=True)]) == [4]
    page = await store.messages(alice, "c1", after=0, limit=100)
    assert [m.seq for m in page.messages] == [1, 2, 3, 4]
    assert [m.message_id for m in page.messages] == ["m1", "r1", "m2", "r2"]
    assert [m.status for m in page.messages] == ["answered", "final", "failed", "error"]
    assert page.messages[1].in_reply_to == "m1"
    assert page.messages[1].conversation_id == "c1"  # the TEXT's, not the reply's own
    assert page.messages[3].error_code == "agent_offline"
    assert page.last_seq == 4


async def test_a_message_stored_twice_keeps_its_seq(store: SqlConversationStore) -> None:
    alice = user()
    assert await store.append([text(alice, "c", "m1"), text(alice, "c", "m1")]) == [1, 1]
    assert await store.append([text(alice, "c", "m1"), text(alice, "c", "m2")]) == [1, 2]
    page = await store.messages(alice, "c", after=0, limit=10)
    assert [m.seq for m in page.messages] == [1, 2]


async def test_an_answer_to_an_unknown_text_is_dropped(store: SqlConversationStore) -> None:
    alice = user()
    assert await store.append([reply(alice, "never-stored", "r1")]) == [None]


async def test_concurrent_writers_never_share_or_skip_a_seq(store: SqlConversationStore) -> None:
    alice = user()
    batches = [[text(alice, "busy", f"m{w}-{i}") for i in range(5)] for w in range(8)]
    results = await asyncio.gather(*(store.append(batch) for batch in batches))
    seqs = sorted(seq for result in results for seq in result if seq is not None)
    assert seqs == list(range(1, 41))


async def test_pages_of_messages_after_an_offset(store: SqlConversationStore) -> None:
    alice = user()
    await store.append([text(alice, "c", f"m{i}") for i in range(25)])
    seen: list[int] = []
    after = 0
    while True:
        page = await store.messages(alice, "c", after=after, limit=10)
        if not page.messages:
            break
        seen += [m.seq for m in page.messages]
        after = page.messages[-1].seq
    assert seen == list(range(1, 26))


async def test_conversations_newest_first_in_pages(store: SqlConversationStore) -> None:
    alice, bob = user(), user()
    for i in range(7):
        await store.append([text(alice, f"c{i}", f"a{i}", at=2000.0 + i)])
    await store.append([text(bob, "theirs", "b1", at=5000.0)])
    await store.append([text(alice, "c2", "a-late", at=3000.0)])  # c2 is the newest now
    names: list[str] = []
    cursor = None
    while True:
        page = await store.conversations(alice, limit=3, before=cursor)
        names += [c.conversation_id for c in page.conversations]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert names == ["c2", "c6", "c5", "c4", "c3", "c1", "c0"]
    everyone = await store.conversations(None, limit=1000)
    owners = {(c.user_id, c.conversation_id) for c in everyone.conversations}
    assert (bob, "theirs") in owners
    assert (alice, "c0") in owners


async def test_another_users_conversation_is_not_found(store: SqlConversationStore) -> None:
    alice, bob = user(), user()
    await store.append([text(alice, "private", "m1")])
    with pytest.raises(ConversationNotFound):
        await store.messages(bob, "private", after=0, limit=10)
    with pytest.raises(ConversationNotFound):
        await store.delete(bob, "private")
    # An admin (no user) finds it; unless two users have that id.
    assert len((await store.messages(None, "private", after=0, limit=10)).messages) == 1


async def test_an_admin_must_name_the_user_of_a_shared_id(store: SqlConversationStore) -> None:
    alice, bob = user(), user()
    shared = f"shared-{uuid.uuid4().hex[:8]}"
    await store.append([text(alice, shared, "m1"), text(bob, shared, "m1")])
    with pytest.raises(AmbiguousConversation):
        await store.messages(None, shared, after=0, limit=10)
    assert len((await store.messages(bob, shared, after=0, limit=10)).messages) == 1


async def test_delete_removes_a_conversation(store: SqlConversationStore) -> None:
    alice = user()
    await store.append([text(alice, "gone", "m1"), text(alice, "kept", "m2")])
    await store.delete(alice, "gone")
    with pytest.raises(ConversationNotFound):
        await store.messages(alice, "gone", after=0, limit=10)
    names = [c.conversation_id for c in (await store.conversations(alice, limit=10)).conversations]
    assert names == ["kept"]
    # The id may be used again, from seq 1.
    assert await store.append([text(alice, "gone", "m3")]) == [1]


async def test_retention_makes_old_offsets_unrecoverable(store: SqlConversationStore) -> None:
    alice = user()
    await store.append([text(alice, "c", f"old{i}", at=100.0 + i) for i in range(3)])
    await store.append([text(alice, "c", "new", at=900.0)])
    await store.append([text(alice, "all-old", "x", at=100.0)])
    assert await store.expire(before=500.0) >= 4
    with pytest.raises(Unrecoverable) as caught:
        await store.messages(alice, "c", after=1, limit=10)
    assert caught.value.first_seq == 4
    assert "unrecoverable" in str(caught.value)
    page = await store.messages(alice, "c", after=3, limit=10)
    assert [m.message_id for m in page.messages] == ["new"]
    with pytest.raises(Unrecoverable):
        await store.messages(alice, "all-old", after=0, limit=10)
    names = [c.conversation_id for c in (await store.conversations(alice, limit=10)).conversations]
    assert names == ["c"]  # one with nothing left is not listed


async def test_a_bad_cursor_is_a_value_error(store: SqlConversationStore) -> None:
    with pytest.raises(ValueError, match="cursor"):
        await store.conversations(user(), limit=10, before="not-a-cursor")


async def test_a_database_that_is_not_there_is_unavailable(tmp_path: Path) -> None:
    closed = SqlConversationStore(
        "postgresql+asyncpg://postgres@127.0.0.1:1/none", connect_timeout=2.0
    )
    with pytest.raises(StoreUnavailable, match=r"127\.0\.0\.1:1"):
        await closed.open()
    await closed.close()
