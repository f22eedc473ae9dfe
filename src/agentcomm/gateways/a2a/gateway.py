"""The gateway's place on the hub: one frontend session through which every A2A task goes.

The gateway talks to the hub exactly as a WebSocket frontend does: its TEXTs and CANCELs go to
the hub's router (`accept_from_frontend`), and what the router sends the session — status
echoes, chunks, replies, errors — comes to a link that hands each frame to the task it is
about. So routing, stickiness of a conversation, answer timeouts and the one final answer per
TEXT are the hub's own, not written again here.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Protocol

import orjson

from agentcomm.config import Settings
from agentcomm.core.auth import Authenticator
from agentcomm.core.sessions import FrameSource, FrontendSessions
from agentcomm.gateways.a2a.tasks import TaskBook, TaskRecord
from agentcomm.protocol.models import AgentInfo, Envelope
from agentcomm.protocol.vocabulary import MessageType

log = logging.getLogger(__name__)

GATEWAY_NAME = "a2a-gateway"
# Presence goes to every session; the gateway reads presence from the directory instead, so
# these frames are dropped unparsed (the codec writes message_type first).
_PRESENCE_PREFIX = b'{"message_type":"AGENT_STATUS_UPDATE"'


class Router(Protocol):
    """The hub's router, as a frontend's frames reach it."""

    def accept_from_frontend(
        self, frontend_id: str, message: Envelope, *, received_at: float | None = None
    ) -> Awaitable[None]: ...


class Directory(Protocol):
    """The agents of the hub (and of its cluster)."""

    def info(self, agent_id: str) -> AgentInfo | None: ...

    def snapshot(self) -> list[AgentInfo]: ...


@dataclass(frozen=True, slots=True)
class A2AParts:
    """What the A2A gateway is lent by the hub, and nothing more."""

    settings: Settings
    auth: Authenticator
    sessions: FrontendSessions
    router: Router
    agents: Directory


class GatewayLink:
    """The gateway's session link: frames from the hub, each handed to its task at once."""

    def __init__(self, book: TaskBook) -> None:
        self._book = book

    def send_frame(self, frame: bytes) -> None:
        if frame.startswith(_PRESENCE_PREFIX):
            return
        try:
            data = orjson.loads(frame)
        except orjson.JSONDecodeError:
            log.error("The hub sent the A2A gateway a frame that is not JSON: %.200r", frame)
            return
        if isinstance(data, dict):
            self._book.frame(data)

    def send_frames(self, source: FrameSource) -> None:
        """Pages of the agent list: not read (see _PRESENCE_PREFIX)."""


class A2AGateway:
    """Sends A2A tasks into the hub and keeps them (`book`)."""

    def __init__(self, parts: A2AParts) -> None:
        self.parts = parts
        self.book = TaskBook()
        self._link = GatewayLink(self.book)
        self._frontend_id: str | None = None

    @property
    def frontend_id(self) -> str:
        """The gateway's session, opened at the first task (a hub nobody calls over A2A shows
        no extra frontend)."""
        if self._frontend_id is None:
            session, _ = self.parts.sessions.register(
                self._link, GATEWAY_NAME, {"stream": True, "delivered_echo": True}
            )
            self._frontend_id = session.frontend_id
            log.info("A2A gateway speaks to the hub as frontend %s", self._frontend_id)
        return self._frontend_id

    async def send(self, record: TaskRecord, text: str) -> None:
        """The task's TEXT to its agent (the broker's choice when it names none). Raises
        ProtocolError for a message the hub refuses outright."""
        message = Envelope(
            message_type=MessageType.TEXT,
            message_id=record.task_id,
            receiver_id=record.agent_id or None,
            text_payload=text,
            conversation_id=record.context_id,
        )
        self.book.open(record)
        try:
            await self.parts.router.accept_from_frontend(self.frontend_id, message)
        except BaseException:
            self.book.forget(record.task_id)
            raise

    async def cancel(self, record: TaskRecord) -> None:
        """CANCEL for the task's TEXT; the agent's final answer (or `cancelled`) ends it."""
        message = Envelope(
            message_type=MessageType.CANCEL,
            in_reply_to_message_id=record.task_id,
            receiver_id=record.agent_id or None,
        )
        await self.parts.router.accept_from_frontend(self.frontend_id, message)
