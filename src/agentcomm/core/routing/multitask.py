"""Double-texting: a second TEXT into a conversation whose answer is still running.

The sender chooses per TEXT with `metadata.multitask` (protocol/rules.py reads it): `allow`
(the default, as before: both go to the agent) or `reject` (the new one is refused at once with
ERROR conversation_busy). A conversation is a user's: two tabs of one user writing into one
conversation share it. An answer that never comes (its frontend went away) lets go of the
conversation after ANSWER_TIMEOUT.
"""

from __future__ import annotations

from agentcomm.core.clock import Clock
from agentcomm.core.sessions import FrontendSessions
from agentcomm.protocol.models import Envelope

# Where a TEXT that names no conversation belongs (as history keeps it).
DEFAULT_CONVERSATION = "default"
# Conversations with an answer running that are remembered at most.
CONVERSATIONS_KEPT = 100_000


class ConversationGate:
    """Which conversations have an answer running, and to which TEXT."""

    def __init__(self, clock: Clock, sessions: FrontendSessions, *, hold_for: float) -> None:
        self._clock = clock
        self._sessions = sessions
        self._hold_for = hold_for
        # (user, conversation) -> (TEXT frontend, TEXT message_id, since)
        self._running: dict[tuple[str, str], tuple[str, str, float]] = {}
        # (frontend, TEXT message_id) -> (user, conversation)
        self._by_text: dict[tuple[str, str], tuple[str, str]] = {}

    def key(self, frontend_id: str, message: Envelope) -> tuple[str, str]:
        session = self._sessions.get(frontend_id)
        user = session.user if session is not None else frontend_id
        return user, message.conversation_id or DEFAULT_CONVERSATION

    def busy(self, key: tuple[str, str]) -> bool:
        entry = self._running.get(key)
        if entry is None:
            return False
        if self._clock.monotonic() - entry[2] >= self._hold_for:
            self._let_go(key)
            return False
        return True

    def start(self, key: tuple[str, str], frontend_id: str, message_id: str) -> None:
        previous = self._running.pop(key, None)
        if previous is not None:
            self._by_text.pop(previous[:2], None)
        self._running[key] = (frontend_id, message_id, self._clock.monotonic())
        self._by_text[(frontend_id, message_id)] = key
        while len(self._running) > CONVERSATIONS_KEPT:
            # The oldest first: their answers are the likeliest never to come.
            self._let_go(next(iter(self._running)))

    def finished(self, frontend_id: str, message_id: str) -> None:
        """The TEXT `message_id` has its final answer, or was never sent."""
        key = self._by_text.pop((frontend_id, message_id), None)
        if key is not None and self._running.get(key, ("", "", 0.0))[:2] == (
            frontend_id,
            message_id,
        ):
            del self._running[key]

    def _let_go(self, key: tuple[str, str]) -> None:
        frontend_id, message_id, _ = self._running.pop(key)
        self._by_text.pop((frontend_id, message_id), None)
