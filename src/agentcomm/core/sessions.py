"""Frontend sessions: who is connected, how to reach them, and what waits for a resume.

A session outlives its socket for `resume_window` seconds: frames addressed to it meanwhile are
kept (in order, bounded) and delivered when the frontend comes back with its `frontend_id` and
`resume_token`.
"""

from __future__ import annotations

import logging
import secrets
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from agentcomm.core.clock import Clock
from agentcomm.protocol.ids import new_frontend_id

log = logging.getLogger(__name__)

# Frames kept for a disconnected frontend; past this (or past the session's backlog bytes) the
# oldest are dropped and it is logged.
RESUME_BUFFER_FRAMES = 1000
# The default bound on those frames' bytes.
RESUME_BUFFER_BYTES = 512 * 1024
# The capability a frontend sets to be sent the frames of its user's conversations that its
# other sockets (tabs, devices) sent or were answered on this hub.
USER_FRAMES_CAPABILITY = "user_frames"
# Final answers kept per session, to be given again to a frontend that sends a TEXT again
# because its answer went out on a connection that broke before it arrived.
FINALS_KEPT = 64


class FrameSource(Protocol):
    """Frames made only as a connection can take them (a long agent list, page by page)."""

    def next_frame(self) -> bytes | None:
        """The next frame; None once there is no more."""


class FrontendLink(Protocol):
    """One live connection to a frontend, as the WebSocket adapter provides it."""

    def send_frame(self, frame: bytes) -> None:
        """Queues a frame without waiting; the link closes itself when its buffer overflows."""

    def send_frames(self, source: FrameSource) -> None:
        """Sends what `source` gives, a frame at a time as the connection drains; a source
        still being read is replaced by this one."""


@dataclass
class FrontendSession:
    frontend_id: str
    frontend_name: str
    resume_token: str
    capabilities: dict[str, Any]
    link: FrontendLink | None
    detached_at: float | None = None
    # The user it belongs to (the token's `sub`, or the `user_id` it named on an open hub);
    # None: its own user, by its frontend id.
    user_id: str | None = None
    backlog_limit: int = RESUME_BUFFER_BYTES
    # Made when the first frame waits for a resume: most sessions never need one.
    _backlog: deque[bytes] | None = None
    _backlog_bytes: int = 0
    # message_id of a TEXT -> the frame of its final answer and the connection it went out
    # on (None: waiting in the backlog), the newest FINALS_KEPT.
    finals: OrderedDict[str, tuple[bytes, FrontendLink | None]] = field(default_factory=OrderedDict)

    @property
    def backlog(self) -> deque[bytes]:
        """Frames kept for a resume, oldest first (read-only: `keep_for_resume` adds)."""
        return self._backlog if self._backlog is not None else deque()

    def keep_for_resume(self, frame: bytes) -> None:
        if self._backlog is None:
            self._backlog = deque()
        backlog = self._backlog
        backlog.append(frame)
        self._backlog_bytes += len(frame)
        dropped = 0
        while len(backlog) > 1 and (
            len(backlog) > RESUME_BUFFER_FRAMES or self._backlog_bytes > self.backlog_limit
        ):
            self._backlog_bytes -= len(backlog.popleft())
            dropped += 1
        if dropped:
            log.warning(
                "Resume buffer of %s is full; dropped its %d oldest frames",
                self.frontend_id,
                dropped,
            )

    def take_backlog(self) -> bytes | None:
        """The oldest frame kept for the resume (None: none left)."""
        if not self._backlog:
            self._backlog = None
            self._backlog_bytes = 0
            return None
        frame = self._backlog.popleft()
        self._backlog_bytes -= len(frame)
        return frame

    @property
    def user(self) -> str:
        """The user whose conversations this session's are."""
        return self.user_id or self.frontend_id

    @property
    def wants_stream(self) -> bool:
        return bool(self.capabilities.get("stream"))

    def keep_final(self, message_id: str, frame: bytes) -> None:
        """Call before sending `frame`, the final answer to `message_id`."""
        self.finals[message_id] = (frame, self.link)
        self.finals.move_to_end(message_id)
        if len(self.finals) > FINALS_KEPT:
            self.finals.popitem(last=False)

    def final_lost_with_a_connection(self, message_id: str) -> bytes | None:
        """The final answer to `message_id` if it went out on an earlier connection than the
        current one (it may have been lost with it); None when there is none, or when it went
        (or is going) out on the current one."""
        kept = self.finals.get(message_id)
        if kept is None:
            return None
        frame, link = kept
        return frame if link is not None and link is not self.link else None


class FrontendSessions:
    """Every frontend of this server process, live or waiting to resume."""

    def __init__(
        self,
        clock: Clock,
        *,
        resume_window: float,
        server_tag: str = "",
        backlog_bytes: int = RESUME_BUFFER_BYTES,
    ) -> None:
        self._clock = clock
        self._server_tag = server_tag
        self._resume_window = resume_window
        self._backlog_bytes = backlog_bytes
        self._sessions: dict[str, FrontendSession] = {}
        # user -> the frontend ids of its sessions that asked for USER_FRAMES_CAPABILITY.
        self._followers: dict[str, set[str]] = {}

    def register(
        self,
        link: FrontendLink,
        frontend_name: str,
        capabilities: dict[str, Any],
        *,
        frontend_id: str | None = None,
        resume_token: str | None = None,
        user_id: str | None = None,
    ) -> tuple[FrontendSession, bool]:
        """Opens a session, or resumes one when id and token match. Returns (session, resumed)."""
        if frontend_id and resume_token:
            previous = self._sessions.get(frontend_id)
            if previous is not None and secrets.compare_digest(previous.resume_token, resume_token):
                previous.link = link
                previous.detached_at = None
                previous.frontend_name = frontend_name
                self._unfollow(previous)
                previous.capabilities = capabilities
                previous.user_id = user_id
                self._follow(previous)
                return previous, True
        session = FrontendSession(
            frontend_id=new_frontend_id(self._server_tag),
            frontend_name=frontend_name,
            resume_token=secrets.token_urlsafe(24),
            capabilities=capabilities,
            link=link,
            backlog_limit=self._backlog_bytes,
            user_id=user_id,
        )
        self._sessions[session.frontend_id] = session
        self._follow(session)
        return session, False

    def siblings(self, frontend_id: str) -> list[str]:
        """The other sessions of this frontend's user that asked to follow its conversations
        (`capabilities.user_frames`); none for a frontend that names no user."""
        session = self._sessions.get(frontend_id)
        if session is None or session.user_id is None:
            return []
        followers = self._followers.get(session.user_id)
        if not followers:
            return []
        return [other for other in followers if other != frontend_id]

    def _follow(self, session: FrontendSession) -> None:
        if session.user_id is not None and session.capabilities.get(USER_FRAMES_CAPABILITY):
            self._followers.setdefault(session.user_id, set()).add(session.frontend_id)

    def _unfollow(self, session: FrontendSession) -> None:
        if session.user_id is None:
            return
        followers = self._followers.get(session.user_id)
        if followers is not None:
            followers.discard(session.frontend_id)
            if not followers:
                del self._followers[session.user_id]

    def flush_backlog(self, session: FrontendSession) -> int:
        """Sends what waited while the frontend was away; returns how many frames."""
        sent = 0
        while session.link is not None and (frame := session.take_backlog()) is not None:
            session.link.send_frame(frame)
            sent += 1
        for message_id, (frame, link) in list(session.finals.items()):
            if link is None:  # it was in the backlog: it goes out on this connection
                session.finals[message_id] = (frame, session.link)
        return sent

    def detach(self, frontend_id: str, link: FrontendLink) -> None:
        """The socket closed; keep the session for a resume."""
        session = self._sessions.get(frontend_id)
        if session is not None and session.link is link:
            session.link = None
            session.detached_at = self._clock.monotonic()

    def get(self, frontend_id: str) -> FrontendSession | None:
        return self._sessions.get(frontend_id)

    def send(self, frontend_id: str, frame: bytes) -> bool:
        """Delivers to a live socket or keeps it for a resume; False when no such session."""
        session = self._sessions.get(frontend_id)
        if session is None:
            return False
        if session.link is not None:
            session.link.send_frame(frame)
        else:
            session.keep_for_resume(frame)
        return True

    def broadcast(self, frame: bytes) -> None:
        """To every live socket (presence only: nothing private is broadcast)."""
        for session in self._sessions.values():
            if session.link is not None:
                session.link.send_frame(frame)

    def broadcast_frames(self, source: Callable[[], FrameSource]) -> None:
        """To every live socket, the frames of a source made for each (presence only)."""
        for session in self._sessions.values():
            if session.link is not None:
                session.link.send_frames(source())

    def live_count(self) -> int:
        return sum(1 for session in self._sessions.values() if session.link is not None)

    def expire(self) -> list[str]:
        """Forgets sessions detached for longer than the resume window."""
        now = self._clock.monotonic()
        expired = [
            session.frontend_id
            for session in self._sessions.values()
            if session.detached_at is not None and now - session.detached_at > self._resume_window
        ]
        for frontend_id in expired:
            self._unfollow(self._sessions.pop(frontend_id))
        return expired

    def live_links(self) -> list[FrontendLink]:
        return [session.link for session in self._sessions.values() if session.link is not None]
