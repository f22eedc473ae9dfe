"""`ConversationStore` on SQLAlchemy's async core: SQLite through aiosqlite, PostgreSQL through
asyncpg. The few statements that differ (an upsert that returns the new seq) are built per
dialect; everything else is the same SQL on both.

Seqs: a conversation's row holds its last seq. Storing n messages raises it by n in the same
transaction that inserts them (an upsert that returns the new value), so the row lock makes
seqs unique and gapless across hubs sharing one database, and a rolled-back write gives its
seqs back.
"""

from __future__ import annotations

import base64
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from agentcomm.history import migrate
from agentcomm.history.records import (
    AmbiguousConversation,
    ConversationNotFound,
    ConversationPage,
    ConversationSummary,
    MessagePage,
    MessageStatus,
    NewMessage,
    StoredMessage,
    StoreUnavailable,
    Unrecoverable,
)
from agentcomm.history.schema import conversations, messages

log = logging.getLogger(__name__)

_C = conversations.c
_M = messages.c


class SqlConversationStore:
    """The conversation store on the database `url` names (a SQLAlchemy async URL)."""

    def __init__(self, url: str, *, connect_timeout: float = 5.0) -> None:
        self.url = sa.make_url(url)
        self._connect_timeout = connect_timeout
        self._engine: AsyncEngine | None = None

    @property
    def dialect(self) -> str:
        return self.url.get_backend_name()

    def describe(self) -> str:
        """The database, without its password, for logs."""
        return self.url.render_as_string(hide_password=True)

    async def open(self) -> None:
        if self._engine is not None:
            return
        engine = self._make_engine()
        try:
            async with self._errors("open"):
                await migrate.upgrade(engine)
        except BaseException:
            await engine.dispose()
            raise
        self._engine = engine

    async def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.dispose()

    async def ping(self) -> None:
        async with self._connection("ping") as connection:
            await connection.execute(sa.text("SELECT 1"))

    # -- writing -------------------------------------------------------------------------------

    async def append(self, batch: Sequence[NewMessage]) -> list[int | None]:
        if not batch:
            return []
        try:
            async with self._connection("append", begin=True) as connection:
                return await _append(connection, batch)
        except StoreUnavailable as exc:
            if not isinstance(exc.__cause__, IntegrityError):
                raise
        # Another writer stored one of these meanwhile: again, finding it stored this time.
        async with self._connection("append", begin=True) as connection:
            return await _append(connection, batch)

    async def delete(self, user_id: str | None, conversation_id: str) -> None:
        async with self._connection("delete", begin=True) as connection:
            owner = await _owner(connection, user_id, conversation_id)
            where = (_M.user_id == owner) & (_M.conversation_id == conversation_id)
            await connection.execute(messages.delete().where(where))
            await connection.execute(
                conversations.delete().where(
                    (_C.user_id == owner) & (_C.conversation_id == conversation_id)
                )
            )

    async def expire(self, before: float) -> int:
        async with self._connection("expire", begin=True) as connection:
            removed = await connection.execute(
                messages.delete().where(_M.at < before).returning(_M.user_id, _M.conversation_id)
            )
            rows = removed.all()
            touched = {(row.user_id, row.conversation_id) for row in rows}
            oldest_kept = (
                sa.select(sa.func.min(_M.seq))
                .where((_M.user_id == _C.user_id) & (_M.conversation_id == _C.conversation_id))
                .scalar_subquery()
            )
            for user_id, conversation_id in touched:
                # Where its kept messages start now: an offset before it is unrecoverable.
                await connection.execute(
                    conversations.update()
                    .where((_C.user_id == user_id) & (_C.conversation_id == conversation_id))
                    .values(first_seq=sa.func.coalesce(oldest_kept, _C.last_seq + 1))
                )
            return len(rows)

    # -- reading -------------------------------------------------------------------------------

    async def conversations(
        self, user_id: str | None, *, limit: int, before: str | None = None
    ) -> ConversationPage:
        query = sa.select(conversations).where(_C.first_seq <= _C.last_seq)
        if user_id is not None:
            query = query.where(_C.user_id == user_id)
        if before:
            at, owner, conversation_id = _decode_cursor(before)
            query = query.where(
                sa.tuple_(_C.updated_at, _C.user_id, _C.conversation_id)
                < sa.tuple_(sa.literal(at), sa.literal(owner), sa.literal(conversation_id))
            )
        query = query.order_by(
            _C.updated_at.desc(), _C.user_id.desc(), _C.conversation_id.desc()
        ).limit(limit + 1)
        async with self._connection("list conversations") as connection:
            rows = (await connection.execute(query)).all()
        page = [_summary(row._mapping) for row in rows[:limit]]
        cursor = None
        if len(rows) > limit and page:
            last = page[-1]
            cursor = _encode_cursor(last.updated_at, last.user_id, last.conversation_id)
        return ConversationPage(page, cursor)

    async def messages(
        self, user_id: str | None, conversation_id: str, *, after: int, limit: int
    ) -> MessagePage:
        async with self._connection("read messages") as connection:
            owner = await _owner(connection, user_id, conversation_id)
            row = (
                await connection.execute(
                    sa.select(_C.first_seq, _C.last_seq).where(
                        (_C.user_id == owner) & (_C.conversation_id == conversation_id)
                    )
                )
            ).one()
            first_seq, last_seq = int(row.first_seq), int(row.last_seq)
            if after < first_seq - 1:
                raise Unrecoverable(conversation_id, after, first_seq)
            rows = (
                await connection.execute(
                    sa.select(messages)
                    .where(
                        (_M.user_id == owner)
                        & (_M.conversation_id == conversation_id)
                        & (_M.seq > after)
                    )
                    .order_by(_M.seq)
                    .limit(limit)
                )
            ).all()
        return MessagePage(
            conversation_id, [_stored(row._mapping) for row in rows], last_seq, first_seq
        )

    # -- the engine ----------------------------------------------------------------------------

    def _make_engine(self) -> AsyncEngine:
        options: dict[str, Any] = {}
        if self.dialect == "sqlite":
            database = self.url.database or ""
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            options["connect_args"] = {"timeout": 30}
        else:
            options["connect_args"] = {"timeout": self._connect_timeout}
            options["pool_pre_ping"] = True
        engine = create_async_engine(self.url, **options)
        if self.dialect == "sqlite":
            event.listen(engine.sync_engine, "connect", _tune_sqlite)
        return engine

    @contextlib.asynccontextmanager
    async def _connection(
        self, doing: str, *, begin: bool = False
    ) -> AsyncIterator[AsyncConnection]:
        if self._engine is None:
            raise StoreUnavailable("The history store is not open.")
        async with self._errors(doing):
            opened = self._engine.begin() if begin else self._engine.connect()
            async with opened as connection:
                yield connection

    @contextlib.asynccontextmanager
    async def _errors(self, doing: str) -> AsyncIterator[None]:
        """The database's failures, in the store's terms (StoreUnavailable, with the cause)."""
        try:
            yield
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(
                f"History database {self.describe()} failed to {doing}: {exc}"
            ) from exc


def _tune_sqlite(dbapi_connection: Any, _record: Any) -> None:
    # WAL: readers do not wait for the writer; NORMAL sync is safe with WAL (a power cut may
    # lose the last transactions, never corrupt the file).
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


async def _append(connection: AsyncConnection, batch: Sequence[NewMessage]) -> list[int | None]:
    seqs: list[int | None] = [None] * len(batch)
    pairs = {(item.user_id, item.message_id) for item in batch}
    stored = await connection.execute(
        sa.select(_M.user_id, _M.message_id, _M.seq).where(
            _M.user_id.in_({user_id for user_id, _ in pairs})
            & _M.message_id.in_({message_id for _, message_id in pairs})
        )
    )
    known: dict[tuple[str, str], int] = {}
    for row in stored:
        if (row.user_id, row.message_id) in pairs:
            known[(row.user_id, row.message_id)] = int(row.seq)
    # Which conversation each new message goes to, and the status of TEXTs answered now.
    placed: list[tuple[int, NewMessage, str]] = []
    texts_in_batch: dict[tuple[str, str], int] = {}
    statuses: dict[int, MessageStatus] = {}
    first_copy: dict[tuple[str, str], int] = {}
    copies: list[tuple[int, int]] = []
    for index, item in enumerate(batch):
        key = (item.user_id, item.message_id)
        if key in known:
            seqs[index] = known[key]
            continue
        if key in first_copy:
            copies.append((index, first_copy[key]))  # twice in one batch: stored once
            continue
        conversation_id: str | None = item.conversation_id
        if item.answers is not None:
            answered = (
                MessageStatus.FAILED
                if item.status is MessageStatus.ERROR
                else (MessageStatus.ANSWERED if item.status is MessageStatus.FINAL else item.status)
            )
            text_index = texts_in_batch.get((item.user_id, item.answers))
            if text_index is not None:
                statuses[text_index] = answered
                conversation_id = batch[text_index].conversation_id
            else:
                conversation_id = await _mark_answered(connection, item, answered)
        else:
            texts_in_batch[key] = index
        if conversation_id is None:
            log.debug("No TEXT %s is stored; its answer is not either", item.answers)
            continue
        first_copy[key] = index
        placed.append((index, item, conversation_id))
    counts: dict[tuple[str, str], int] = {}
    for _, item, conversation_id in placed:
        counts[(item.user_id, conversation_id)] = counts.get((item.user_id, conversation_id), 0) + 1
    next_seq: dict[tuple[str, str], int] = {}
    for (user_id, conversation_id), count in counts.items():
        at = max(
            item.at for _, item, c in placed if (item.user_id, c) == (user_id, conversation_id)
        )
        last = await _advance(connection, user_id, conversation_id, count, at)
        next_seq[(user_id, conversation_id)] = last - count + 1
    rows: list[dict[str, Any]] = []
    for index, item, conversation_id in placed:
        key = (item.user_id, conversation_id)
        seq = next_seq[key]
        next_seq[key] = seq + 1
        seqs[index] = seq
        rows.append(
            {
                "user_id": item.user_id,
                "conversation_id": conversation_id,
                "seq": seq,
                "message_id": item.message_id,
                "message_type": item.message_type,
                "sender_id": item.sender_id,
                "receiver_id": item.receiver_id,
                "text": item.text,
                "status": statuses.get(index, item.status).value,
                "error_code": item.error_code,
                "in_reply_to": item.answers,
                "at": item.at,
            }
        )
    if rows:
        await connection.execute(messages.insert(), rows)
    for index, first in copies:
        seqs[index] = seqs[first]
    return seqs


async def _mark_answered(
    connection: AsyncConnection, answer: NewMessage, status: MessageStatus
) -> str | None:
    """Sets the status of the TEXT `answer` answers; returns its conversation (None: not
    stored)."""
    result = await connection.execute(
        messages.update()
        .where((_M.user_id == answer.user_id) & (_M.message_id == answer.answers))
        .values(status=status.value)
        .returning(_M.conversation_id)
    )
    row = result.first()
    return None if row is None else str(row.conversation_id)


async def _advance(
    connection: AsyncConnection, user_id: str, conversation_id: str, count: int, at: float
) -> int:
    """Raises the conversation's last seq by `count` (making the conversation if new); returns
    the new last seq. The row stays locked until the transaction ends."""
    insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
    statement = (
        insert(conversations)
        .values(
            user_id=user_id,
            conversation_id=conversation_id,
            created_at=at,
            updated_at=at,
            first_seq=1,
            last_seq=count,
        )
        .on_conflict_do_update(
            index_elements=[_C.user_id, _C.conversation_id],
            set_={"last_seq": _C.last_seq + count, "updated_at": at},
        )
        .returning(_C.last_seq)
    )
    return int((await connection.execute(statement)).scalar_one())


async def _owner(connection: AsyncConnection, user_id: str | None, conversation_id: str) -> str:
    """The user whose conversation this is (for an admin, `user_id` None: whoever has it)."""
    query = sa.select(_C.user_id).where(_C.conversation_id == conversation_id)
    if user_id is not None:
        query = query.where(_C.user_id == user_id)
    owners = [str(row.user_id) for row in await connection.execute(query.limit(2))]
    if not owners:
        raise ConversationNotFound(f"No conversation {conversation_id!r}.")
    if len(owners) > 1:
        raise AmbiguousConversation(
            f"Several users have a conversation {conversation_id!r}; name one with ?user_id=."
        )
    return owners[0]


def _summary(row: Any) -> ConversationSummary:
    return ConversationSummary(
        user_id=row["user_id"],
        conversation_id=row["conversation_id"],
        created_at=float(row["created_at"]),
        updated_at=float(row["updated_at"]),
        first_seq=int(row["first_seq"]),
        last_seq=int(row["last_seq"]),
    )


def _stored(row: Any) -> StoredMessage:
    return StoredMessage(
        conversation_id=row["conversation_id"],
        seq=int(row["seq"]),
        message_id=row["message_id"],
        message_type=row["message_type"],
        sender_id=row["sender_id"],
        receiver_id=row["receiver_id"],
        text=row["text"],
        status=row["status"],
        error_code=row["error_code"],
        in_reply_to=row["in_reply_to"],
        at=float(row["at"]),
    )


def _encode_cursor(at: float, user_id: str, conversation_id: str) -> str:
    raw = f"{at!r}\x00{user_id}\x00{conversation_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[float, str, str]:
    """ValueError for a cursor this store did not make."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, user_id, conversation_id = raw.split("\x00")
        return float(at), user_id, conversation_id
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError("The cursor is not one this server gave out.") from exc
