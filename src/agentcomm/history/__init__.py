"""Conversation history: what was said in each conversation of a user, kept in a database.

`ConversationStore` is the interface (`store.py`); `agentcomm.history.sql.SqlConversationStore`
its implementation on SQLite (the embedded default) and PostgreSQL; `agentcomm.history.writer.
HistoryWriter` keeps writes off the chat path. Those two are imported from their modules, so that
reading settings (which checks HISTORY_URL here) does not load SQLAlchemy in every process.
"""

from agentcomm.history.records import (
    AmbiguousConversation,
    ConversationNotFound,
    ConversationPage,
    ConversationSummary,
    HistoryError,
    MessagePage,
    MessageStatus,
    NewMessage,
    StoredMessage,
    StoreUnavailable,
    Unrecoverable,
)
from agentcomm.history.store import ConversationStore
from agentcomm.history.urls import check_history_url, database_url

__all__ = [
    "AmbiguousConversation",
    "ConversationNotFound",
    "ConversationPage",
    "ConversationStore",
    "ConversationSummary",
    "HistoryError",
    "MessagePage",
    "MessageStatus",
    "NewMessage",
    "StoreUnavailable",
    "StoredMessage",
    "Unrecoverable",
    "check_history_url",
    "database_url",
]
