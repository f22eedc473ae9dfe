"""The store side of `agentcomm bench history`: replaying one long conversation, and listing
many conversations, straight against the conversation store (SQLite, and PostgreSQL when one
is reachable), in this process."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from agentcomm.bench.stats import percentile, rounded
from agentcomm.history.records import MessageStatus, NewMessage
from agentcomm.history.sql import SqlConversationStore

# PostgreSQL the bench makes a throwaway database in (trust auth as user postgres, as CI has).
POSTGRES_ADMIN = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "database": "postgres"}
REPLAY_MESSAGES = 10_000
REPLAY_PAGE = 1000
LIST_CONVERSATIONS = 1000
LIST_MESSAGES_EACH = 100
LIST_PAGE = 50
WRITE_BATCH = 1000


def _messages(user: str, conversation: str, count: int, start_at: float) -> list[NewMessage]:
    return [
        NewMessage(
            user_id=user,
            conversation_id=conversation,
            message_id=f"{conversation}-{i}",
            message_type="TEXT" if i % 2 == 0 else "REPLY",
            sender_id="web_bench",
            receiver_id="echo",
            text="x" * 64,
            status=MessageStatus.ACCEPTED if i % 2 == 0 else MessageStatus.FINAL,
            at=start_at + i * 0.001,
        )
        for i in range(count)
    ]


@contextlib.asynccontextmanager
async def postgres_database() -> AsyncIterator[str | None]:
    """A throwaway database's URL, dropped after; None when no PostgreSQL answers."""
    import asyncpg

    name = f"agentcomm_bench_{uuid.uuid4().hex[:10]}"
    try:
        admin = await asyncpg.connect(**POSTGRES_ADMIN, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        yield None
        return
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        with contextlib.suppress(Exception):
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def measure_store(url: str) -> dict[str, Any]:
    """Replay and listing numbers on the database `url` names (empty at the start)."""
    store = SqlConversationStore(url)
    await store.open()
    try:
        return {
            "replay": await _replay(store),
            "listing": await _listing(store),
        }
    finally:
        await store.close()


async def _replay(store: SqlConversationStore) -> dict[str, Any]:
    rows = _messages("replayer", "long", REPLAY_MESSAGES, 1_000_000.0)
    started = time.perf_counter()
    for first in range(0, len(rows), WRITE_BATCH):
        await store.append(rows[first : first + WRITE_BATCH])
    written = time.perf_counter() - started
    started = time.perf_counter()
    after, read = 0, 0
    while True:
        page = await store.messages("replayer", "long", after=after, limit=REPLAY_PAGE)
        if not page.messages:
            break
        read += len(page.messages)
        after = page.messages[-1].seq
    replay_s = time.perf_counter() - started
    return {
        "messages": read,
        "page": REPLAY_PAGE,
        "replay_s": rounded(replay_s),
        "replay_messages_per_s": rounded(read / replay_s, 0) if replay_s else None,
        "under_one_second": replay_s < 1.0,
        "write_messages_per_s": rounded(REPLAY_MESSAGES / written, 0) if written else None,
    }


async def _listing(store: SqlConversationStore) -> dict[str, Any]:
    started = time.perf_counter()
    batch: list[NewMessage] = []
    for number in range(LIST_CONVERSATIONS):
        at = 2_000_000.0 + number
        batch += _messages("lister", f"conv-{number:04d}", LIST_MESSAGES_EACH, at)
        if len(batch) >= WRITE_BATCH * 10:
            await store.append(batch)
            batch = []
    if batch:
        await store.append(batch)
    written = time.perf_counter() - started
    page_ms: list[float] = []
    cursor: str | None = None
    listed = 0
    while True:
        started = time.perf_counter()
        page = await store.conversations("lister", limit=LIST_PAGE, before=cursor)
        page_ms.append((time.perf_counter() - started) * 1000)
        listed += len(page.conversations)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    started = time.perf_counter()
    middle = await store.messages("lister", "conv-0500", after=50, limit=LIST_PAGE)
    middle_ms = (time.perf_counter() - started) * 1000
    page_ms.sort()
    return {
        "conversations": listed,
        "messages_each": LIST_MESSAGES_EACH,
        "page": LIST_PAGE,
        "pages": len(page_ms),
        "page_p50_ms": rounded(percentile(page_ms, 0.5)),
        "page_max_ms": rounded(page_ms[-1]),
        "page_min_ms": rounded(page_ms[0]),
        "one_conversation_page_ms": rounded(middle_ms),
        "one_conversation_page_messages": len(middle.messages),
        "write_messages_per_s": rounded(LIST_CONVERSATIONS * LIST_MESSAGES_EACH / written, 0),
    }


async def measure_stores(folder: Path) -> dict[str, Any]:
    """Both databases: SQLite in `folder`, and PostgreSQL (or why not)."""
    results: dict[str, Any] = {
        "sqlite": await measure_store(f"sqlite+aiosqlite:///{folder / 'bench-history.sqlite3'}")
    }
    async with postgres_database() as url:
        if url is None:
            results["postgresql"] = {"skipped": "no PostgreSQL on 127.0.0.1:5432"}
        else:
            results["postgresql"] = await measure_store(url)
    return results
