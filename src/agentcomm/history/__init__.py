"""Conversation history: what was said in each conversation of a user, kept in a database.

`ConversationStore` is the interface (`store.py`); `SqlConversationStore` its implementation on
SQLite (the embedded default) and PostgreSQL; `HistoryWriter` keeps writes off the chat path.
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
from agentcomm.history.sql import SqlConversationStore
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
    "SqlConversationStore",
    "StoreUnavailable",
    "StoredMessage",
    "Unrecoverable",
    "check_history_url",
    "database_url",
]
