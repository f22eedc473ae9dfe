"""The one interface the hub uses to keep conversations (`ConversationStore`).

One implementation, `SqlConversationStore`, speaks to both databases through SQLAlchemy's
async layer: SQLite (aiosqlite, the embedded default) and PostgreSQL (asyncpg). The contract
tests in tests/contract/test_history_store.py run against both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from agentcomm.history.records import ConversationPage, MessagePage, NewMessage


class ConversationStore(Protocol):
    async def open(self) -> None:
        """Connects and brings the schema to the newest migration; StoreUnavailable if not."""

    async def close(self) -> None:
        """Lets go of every connection; idempotent."""

    async def ping(self) -> None:
        """Raises StoreUnavailable when the database does not answer."""

    async def append(self, messages: Sequence[NewMessage]) -> list[int | None]:
        """Stores `messages` in order, each with the next seq of its conversation (gapless,
        assigned once: a message_id stored before keeps its seq and is not stored again).
        Returns each one's seq (None: an answer to a TEXT this store never had, dropped)."""

    async def conversations(
        self, user_id: str | None, *, limit: int, before: str | None = None
    ) -> ConversationPage:
        """The user's conversations (None: every user's), newest activity first, a page of at
        most `limit`; `before` is the cursor of the previous page."""

    async def messages(
        self, user_id: str | None, conversation_id: str, *, after: int, limit: int
    ) -> MessagePage:
        """Messages with seq > `after`, in seq order, at most `limit`. Raises
        ConversationNotFound, Unrecoverable (retention removed some of them), or, for an
        admin (`user_id` None), AmbiguousConversation."""

    async def delete(self, user_id: str | None, conversation_id: str) -> None:
        """Removes a conversation and its messages; ConversationNotFound if there is none."""

    async def expire(self, before: float) -> int:
        """Removes the messages stored before `before` (epoch seconds); returns how many."""
