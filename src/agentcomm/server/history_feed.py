"""What the router tells of conversations, into history: a frontend's accepted TEXT and the
final answer to it, each under the user of the frontend's session, queued for the writer.

Nothing here waits: the writer (`history/writer.py`) stores off the chat path.
"""

from __future__ import annotations

import logging
import time

from agentcomm.config import Settings
from agentcomm.core.sessions import FrontendSessions
from agentcomm.history.records import MessageStatus, NewMessage, StoreUnavailable
from agentcomm.history.sql import SqlConversationStore
from agentcomm.history.urls import database_url
from agentcomm.history.writer import HistoryWriter
from agentcomm.protocol.models import Envelope
from agentcomm.protocol.vocabulary import MessageType

log = logging.getLogger(__name__)

# Where a TEXT that names no conversation is kept.
DEFAULT_CONVERSATION = "default"


class HistoryFeed:
    def __init__(self, writer: HistoryWriter, sessions: FrontendSessions) -> None:
        self._writer = writer
        self._sessions = sessions

    def text_accepted(self, frontend_id: str, message: Envelope) -> None:
        self._writer.offer(
            NewMessage(
                user_id=self._user(frontend_id),
                conversation_id=message.conversation_id or DEFAULT_CONVERSATION,
                message_id=message.message_id,
                message_type=MessageType.TEXT.value,
                sender_id=frontend_id,
                receiver_id=message.receiver_id or "",
                text=message.text_payload or "",
                status=MessageStatus.ACCEPTED,
                at=time.time(),
            )
        )

    def answered(self, frontend_id: str, message: Envelope) -> None:
        is_error = message.message_type is MessageType.ERROR
        self._writer.offer(
            NewMessage(
                user_id=self._user(frontend_id),
                conversation_id=message.conversation_id or DEFAULT_CONVERSATION,
                message_id=message.message_id,
                message_type=message.message_type.value,
                sender_id=message.sender_id or "",
                receiver_id=frontend_id,
                text=message.text_payload or "",
                status=MessageStatus.ERROR if is_error else MessageStatus.FINAL,
                at=time.time(),
                error_code=message.error_code if is_error else None,
                answers=message.in_reply_to_message_id,
            )
        )

    def _user(self, frontend_id: str) -> str:
        session = self._sessions.get(frontend_id)
        return session.user if session is not None else frontend_id


class ServerHistory:
    """A hub's history: the store, its writer, the feed from the router, retention."""

    def __init__(self, store: SqlConversationStore, settings: Settings, sessions: FrontendSessions):
        self.store = store
        self.writer = HistoryWriter(store, queue_size=settings.history_queue)
        self.feed = HistoryFeed(self.writer, sessions)
        self._retention_seconds = settings.history_retention_days * 86400.0

    @classmethod
    def from_settings(cls, settings: Settings, sessions: FrontendSessions) -> ServerHistory | None:
        """None when HISTORY_URL is `none`."""
        url = database_url(settings.history_url, settings.data_dir)
        if url is None:
            return None
        return cls(SqlConversationStore(url), settings, sessions)

    @property
    def retention_seconds(self) -> float:
        """How long messages are kept (0: for ever)."""
        return self._retention_seconds

    def status(self) -> str:
        return self.writer.status

    async def start(self) -> None:
        await self.writer.start()
        log.info("History in %s (%s)", self.store.describe(), self.writer.status)

    async def stop(self, timeout: float) -> None:
        await self.writer.stop(timeout)
        await self.store.close()

    async def expire_old(self) -> None:
        """Removes what is older than HISTORY_RETENTION_DAYS."""
        if not self._retention_seconds:
            return
        try:
            removed = await self.store.expire(time.time() - self._retention_seconds)
        except StoreUnavailable as exc:
            log.warning("History retention could not run: %s", exc)
            return
        if removed:
            log.info("History retention removed %d messages", removed)
