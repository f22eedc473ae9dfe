"""The SQLite write path: a batch stored by the standard library's sqlite3, in a thread of its
own, in one transaction.

Through SQLAlchemy's async layer every statement crosses the event loop, a greenlet and
aiosqlite's thread, and costs tens of microseconds of the hub's Python time per message — on
the `history` benchmark, a quarter of the round trips. Here the event loop hands the thread
one batch and waits; the statements run in C, and the loop is free meanwhile. Reads stay on
SQLAlchemy (`sql.py`), as do the schema (Alembic) and everything but `append`.

`BEGIN IMMEDIATE` takes the database's write lock before the counters are read, so the seqs of
concurrent writers (other processes on the same file too) never overlap.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from agentcomm.history.batches import Known, plan_batch, wanted_keys
from agentcomm.history.records import NewMessage, StoreUnavailable

_INSERT_MESSAGE = (
    "INSERT INTO messages (user_id, conversation_id, seq, message_id, message_type, sender_id,"
    " receiver_id, text, status, error_code, in_reply_to, at) VALUES (:user_id,"
    " :conversation_id, :seq, :message_id, :message_type, :sender_id, :receiver_id, :text,"
    " :status, :error_code, :in_reply_to, :at)"
)


class SqliteAppender:
    """Appends batches to the SQLite file at `path` (its schema already made)."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="history-sqlite")
        self._db: sqlite3.Connection | None = None

    async def append(self, batch: Sequence[NewMessage]) -> list[int | None]:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._thread, self._append, list(batch))
        except sqlite3.Error as exc:
            raise StoreUnavailable(
                f"History database {self._path} failed to append: {exc}"
            ) from exc

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, self._close)
        self._thread.shutdown(wait=True)

    # -- in the thread -------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            # Autocommit mode: the transaction is this module's own BEGIN IMMEDIATE.
            db = sqlite3.connect(self._path, timeout=30.0, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=30000")
            self._db = db
        return self._db

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _append(self, batch: list[NewMessage]) -> list[int | None]:
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            seqs = self._write(db, batch)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return seqs

    @staticmethod
    def _write(db: sqlite3.Connection, batch: list[NewMessage]) -> list[int | None]:
        known: Known = {}
        for user_id, message_id in wanted_keys(batch):
            row = db.execute(
                "SELECT seq, conversation_id FROM messages WHERE user_id = ? AND message_id = ?",
                (user_id, message_id),
            ).fetchone()
            if row is not None:
                known[(user_id, message_id)] = (int(row[0]), str(row[1]))
        plan = plan_batch(batch, known)
        if not plan.placed:
            return plan.finish()
        first_seqs: dict[tuple[str, str], int] = {}
        for (user_id, conversation_id), times in plan.counts().items():
            row = db.execute(
                "SELECT last_seq FROM conversations WHERE user_id = ? AND conversation_id = ?",
                (user_id, conversation_id),
            ).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO conversations (user_id, conversation_id, created_at, updated_at,"
                    " first_seq, last_seq) VALUES (?, ?, ?, ?, 1, ?)",
                    (user_id, conversation_id, min(times), max(times), len(times)),
                )
                first_seqs[(user_id, conversation_id)] = 1
                continue
            last = int(row[0])
            db.execute(
                "UPDATE conversations SET last_seq = ?, updated_at = ?"
                " WHERE user_id = ? AND conversation_id = ?",
                (last + len(times), max(times), user_id, conversation_id),
            )
            first_seqs[(user_id, conversation_id)] = last + 1
        if plan.updates:
            db.executemany(
                "UPDATE messages SET status = ? WHERE user_id = ? AND message_id = ?",
                plan.updates,
            )
        db.executemany(_INSERT_MESSAGE, plan.rows(first_seqs))
        return plan.finish()
