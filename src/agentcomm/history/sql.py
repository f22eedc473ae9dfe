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
from agentcomm.history.batches import Known, plan_batch, wanted_keys
from agentcomm.history.records import (
    AmbiguousConversation,
    ConversationNotFound,
    ConversationPage,
    ConversationSummary,
    MessagePage,
    NewMessage,
    StoredMessage,
    StoreUnavailable,
    Unrecoverable,
)
from agentcomm.history.schema import conversations, messages
from agentcomm.history.sqlite_writes import SqliteAppender

log = logging.getLogger(__name__)

_C = conversations.c
_M = messages.c


class SqlConversationStore:
    """The conversation store on the database `url` names (a SQLAlchemy async URL)."""

    def __init__(self, url: str, *, connect_timeout: float = 5.0) -> None:
        self.url = sa.make_url(url)
        self._connect_timeout = connect_timeout
        self._engine: AsyncEngine | None = None
        # SQLite files are appended to by the standard library's sqlite3 (sqlite_writes.py).
        self._appender: SqliteAppender | None = None

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
        database = self.url.database or ""
        if self.dialect == "sqlite" and database and database != ":memory:":
            self._appender = SqliteAppender(database)

    async def close(self) -> None:
        engine, self._engine = self._engine, None
        appender, self._appender = self._appender, None
        if appender is not None:
            await appender.close()
        if engine is not None:
            await engine.dispose()

    async def ping(self) -> None:
        async with self._connection("ping") as connection:
            await connection.execute(sa.text("SELECT 1"))

    # -- writing -------------------------------------------------------------------------------

    async def append(self, batch: Sequence[NewMessage]) -> list[int | None]:
        if not batch:
            return []
        if self._appender is not None:
            return await self._appender.append(batch)
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
    plan = plan_batch(batch, await _stored_already(connection, batch))
    if not plan.placed:
        return plan.finish()
    first_seqs = await _advance(connection, plan.counts())
    if plan.updates:
        await connection.execute(
            messages.update()
            .where((_M.user_id == sa.bindparam("u")) & (_M.message_id == sa.bindparam("m")))
            .values(status=sa.bindparam("s")),
            [
                {"s": status, "u": user_id, "m": message_id}
                for status, user_id, message_id in plan.updates
            ],
        )
    await connection.execute(messages.insert(), plan.rows(first_seqs))
    return plan.finish()


async def _stored_already(connection: AsyncConnection, batch: Sequence[NewMessage]) -> Known:
    """What of the batch, and of the TEXTs its answers answer, is stored already."""
    wanted = wanted_keys(batch)
    rows = await connection.execute(
        sa.select(_M.user_id, _M.message_id, _M.seq, _M.conversation_id).where(
            _M.user_id.in_({user_id for user_id, _ in wanted})
            & _M.message_id.in_({message_id for _, message_id in wanted})
        )
    )
    return {
        (row.user_id, row.message_id): (int(row.seq), str(row.conversation_id))
        for row in rows
        if (row.user_id, row.message_id) in wanted
    }


async def _advance(
    connection: AsyncConnection, counts: dict[tuple[str, str], list[float]]
) -> dict[tuple[str, str], int]:
    """Raises each conversation's last seq by the number of its new messages (making the
    conversations that are new); returns each one's first new seq.

    The counters are read under a lock held to the end of the transaction: on PostgreSQL the
    rows' (`FOR UPDATE`, taken in key order, so that two writers never wait for each other in a
    circle), on SQLite the database's write lock, which the first statement takes. Each step is
    one statement compiled once and run for all the batch's conversations (executemany).
    """
    keys = list(counts)
    insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
    await connection.execute(
        insert(conversations).on_conflict_do_nothing(),
        [
            {
                "user_id": user_id,
                "conversation_id": conversation_id,
                "created_at": min(counts[(user_id, conversation_id)]),
                "updated_at": min(counts[(user_id, conversation_id)]),
                "first_seq": 1,
                "last_seq": 0,
            }
            for user_id, conversation_id in keys
        ],
    )
    locked = await connection.execute(
        sa.select(_C.user_id, _C.conversation_id, _C.last_seq)
        .where(
            _C.user_id.in_({user_id for user_id, _ in keys})
            & _C.conversation_id.in_({conversation_id for _, conversation_id in keys})
        )
        .order_by(_C.user_id, _C.conversation_id)
        .with_for_update()
    )
    first: dict[tuple[str, str], int] = {}
    for row in locked:
        key = (row.user_id, row.conversation_id)
        if key in counts:
            first[key] = int(row.last_seq) + 1
    await connection.execute(
        conversations.update()
        .where((_C.user_id == sa.bindparam("u")) & (_C.conversation_id == sa.bindparam("c")))
        .values(last_seq=sa.bindparam("l"), updated_at=sa.bindparam("t")),
        [
            {"u": key[0], "c": key[1], "l": first[key] + len(times) - 1, "t": max(times)}
            for key, times in counts.items()
        ],
    )
    return first


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
