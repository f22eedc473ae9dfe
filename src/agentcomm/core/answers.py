"""Exactly one final answer per accepted TEXT.

The ledger remembers every TEXT the server handed to an agent until its final `REPLY` or
`ERROR` passes. A second final answer for the same message (an at-least-once redelivery that an
agent answered twice) is dropped. When an agent goes offline and does not come back within
DELIVERY_TIMEOUT, each of its unanswered messages is answered for it with `ERROR agent_offline`,
so no sender waits in silence; if the agent answers later after all, that late answer is the
second one and is dropped.

A TEXT refused with `ERROR bus_unavailable` was not accepted, but when the bus lost only the
confirm it may hold the message after all, and its answer would be a second final. Such an
answer is held back instead: dropped if the frontend never sends the message again, handed over
as the answer when it re-sends it (with the same message_id).

Every TEXT the server accepted awaits its answer from then on: if none comes at all (not even
a chunk or a notice about it) within ANSWER_TIMEOUT, its sender is answered `ERROR
answer_timeout`. While it waits, an answer that a broker sent back to the server bare (without
its receiver or the id it answers) can still be matched to it: by the TEXT's id and the agent
it went to, by an answer id that names it (`protocol.ids.answer_message_id`), or by the id of
an answer that passed through this server on its way out.

A message_id is unique per sender, not across senders (two frontends may both number their
messages from 1), so everything here is keyed by (frontend_id, message_id).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from agentcomm.core.clock import Clock
from agentcomm.protocol.ids import text_ref
from agentcomm.protocol.models import Envelope
from agentcomm.protocol.vocabulary import FINAL_ANSWER_TYPES, MessageType

# Generous: an agent may think (or run tools) for minutes before its first word.
DEFAULT_ANSWER_TIMEOUT = 600.0

# Answered message ids remembered to drop late duplicates; bounded so memory stays flat.
ANSWERED_MEMORY = 100_000
# Frontend message ids remembered to drop re-sent copies (a browser retrying after a drop).
ACCEPTED_MEMORY = 100_000
# Refused TEXTs remembered to hold back a late answer to them.
REFUSED_MEMORY = 10_000
# (frontend, agent) pairs that have a conversation: the frontend's TEXT reached the agent.
CONVERSATIONS_MEMORY = 100_000


@dataclass
class Outstanding:
    message: Envelope
    agent_id: str
    agent_offline_since: float | None = None


@dataclass(slots=True)
class Awaiting:
    """An accepted TEXT with no final answer yet (only what answering it for its sender
    needs: its text may be large, and it waits for minutes)."""

    frontend_id: str
    message_id: str
    conversation_id: str | None
    deadline: float
    ref: str
    # Ids of answers to it that passed through this server (see `answer_passed`).
    answer_ids: tuple[str, ...] = ()
    # When it was accepted (the clock's monotonic time), and whether a first word of its
    # answer (a chunk, a notice) went out: the time to first token and to the final answer.
    accepted_at: float = 0.0
    heard: bool = False


@dataclass(frozen=True, slots=True)
class PassedAnswer:
    """An answer that went out through this server: to which TEXT, and what it was."""

    frontend_id: str
    message_id: str  # of the TEXT it answers
    message_type: MessageType  # REPLY (for chunks too) or ERROR
    error_code: str | None


class AnswerLedger:
    def __init__(
        self,
        clock: Clock,
        *,
        delivery_timeout: float,
        answer_timeout: float = DEFAULT_ANSWER_TIMEOUT,
    ) -> None:
        self._clock = clock
        self._delivery_timeout = delivery_timeout
        self._answer_timeout = answer_timeout
        self._outstanding: dict[tuple[str, str], Outstanding] = {}
        # Oldest deadline first: the timeout is the same for all, and a TEXT heard of again
        # moves to the end.
        self._awaiting: OrderedDict[tuple[str, str], Awaiting] = OrderedDict()
        # (frontend_id, text_ref) -> message_id of an awaiting TEXT.
        self._by_ref: dict[tuple[str, str], str] = {}
        # message_id -> the frontends awaiting an answer to a TEXT of theirs with that id.
        self._askers: dict[str, tuple[str, ...]] = {}
        self._passed: dict[str, PassedAnswer] = {}
        self._answered: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._accepted: OrderedDict[tuple[str, str], None] = OrderedDict()
        # (frontend_id, message_id) of refused TEXTs -> the answer that came for one anyway.
        self._refused: OrderedDict[tuple[str, str], Envelope | None] = OrderedDict()
        self._conversations: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._first_word: Callable[[float], None] = _ignore
        self._final_answer: Callable[[float], None] = _ignore

    def observe_timings(
        self, first_word: Callable[[float], None], final_answer: Callable[[float], None]
    ) -> None:
        """Calls `first_word` with the seconds from a TEXT accepted to the first part of its
        answer passed to its frontend, and `final_answer` with those to its final answer."""
        self._first_word, self._final_answer = first_word, final_answer

    # -- frontend re-sends -------------------------------------------------------------------

    def first_time_accepted(self, frontend_id: str, message_id: str) -> bool:
        """False when this frontend already sent a message with this id."""
        key = (frontend_id, message_id)
        if key in self._accepted:
            return False
        self._accepted[key] = None
        if len(self._accepted) > ACCEPTED_MEMORY:
            self._accepted.popitem(last=False)
        return True

    def knows(self, frontend_id: str, message_id: str) -> bool:
        """Whether this frontend sent a TEXT with this id that this server accepted or handed
        to an agent (and still remembers)."""
        key = (frontend_id, message_id)
        return key in self._accepted or key in self._outstanding

    def forget_accepted(self, frontend_id: str, message_id: str) -> None:
        """The message never made it onto the bus: a retry with the same id is welcome."""
        self._accepted.pop((frontend_id, message_id), None)

    def refused(self, frontend_id: str, message_id: str) -> None:
        """The sender was told the TEXT was not sent: a retry with the same id is welcome, and
        an answer to this copy (if the bus stored it after all) is held back."""
        self.forget_accepted(frontend_id, message_id)
        key = (frontend_id, message_id)
        self._refused[key] = None
        self._refused.move_to_end(key)
        if len(self._refused) > REFUSED_MEMORY:
            self._refused.popitem(last=False)

    def is_refused(self, frontend_id: str, message_id: str) -> bool:
        return (frontend_id, message_id) in self._refused

    def hold_if_refused(self, frontend_id: str, message: Envelope) -> bool:
        """True when `message` answers a refused TEXT of `frontend_id` and must not reach it
        now: a final answer is kept for a re-send, chunks are dropped."""
        key = (frontend_id, message.in_reply_to_message_id or "")
        if key not in self._refused:
            return False
        final = message.message_type in (MessageType.REPLY, MessageType.ERROR)
        if final and self._refused[key] is None:
            self._refused[key] = message
        return True

    def resent_after_refusal(self, frontend_id: str, message_id: str) -> Envelope | None:
        """The frontend sends a refused TEXT again: the refusal is over. Returns the answer that
        came for the refused copy meanwhile, if one did."""
        return self._refused.pop((frontend_id, message_id), None)

    # -- outstanding work --------------------------------------------------------------------

    def delivered(self, frontend_id: str, message: Envelope, agent_id: str) -> None:
        key = (frontend_id, message.message_id)
        if key not in self._answered:
            self._outstanding[key] = Outstanding(message, agent_id)
        pair = (frontend_id, agent_id)
        self._conversations[pair] = None
        self._conversations.move_to_end(pair)
        if len(self._conversations) > CONVERSATIONS_MEMORY:
            self._conversations.popitem(last=False)

    def call_reached(self, agent_id: str, message: Envelope, asker: str | None) -> None:
        """A message of a call between agents reached `agent_id`'s queue: the TEXT of `asker`
        (outstanding until its final answer reaches the asker, so that the asker gets ERROR
        agent_offline should `agent_id` go away and not come back within DELIVERY_TIMEOUT,
        instead of waiting for its own timeout), or (asker None) maybe that final answer."""
        if asker:
            self.delivered(asker, message, agent_id)
            return
        answered = message.in_reply_to_message_id
        if (
            answered
            and message.message_type in FINAL_ANSWER_TYPES
            and (agent_id, answered) in self._outstanding
        ):
            self.answer(agent_id, answered)

    def in_conversation(self, frontend_id: str, agent_id: str) -> bool:
        """Whether a TEXT of this frontend was handed to this agent (as far as remembered)."""
        return (frontend_id, agent_id) in self._conversations

    def agent_for(self, frontend_id: str, message_id: str) -> str | None:
        """The agent working on an unanswered message, if this server delivered it."""
        entry = self._outstanding.get((frontend_id, message_id))
        return entry.agent_id if entry else None

    def is_answered(self, frontend_id: str, message_id: str) -> bool:
        return (frontend_id, message_id) in self._answered

    def answer(self, frontend_id: str, message_id: str) -> bool:
        """Records a final answer; False when the message already had one."""
        key = (frontend_id, message_id)
        if key in self._answered:
            return False
        self._outstanding.pop(key, None)
        entry = self._awaiting.get(key)
        if entry is not None:
            elapsed = self._clock.monotonic() - entry.accepted_at
            if not entry.heard:
                self._first_word(elapsed)
            self._final_answer(elapsed)
        self._stop_awaiting(key)
        self._answered[key] = None
        if len(self._answered) > ANSWERED_MEMORY:
            self._answered.popitem(last=False)
        return True

    def agent_offline(self, agent_id: str) -> None:
        now = self._clock.monotonic()
        for entry in self._outstanding.values():
            if entry.agent_id == agent_id and entry.agent_offline_since is None:
                entry.agent_offline_since = now

    def agent_online(self, agent_id: str) -> None:
        for entry in self._outstanding.values():
            if entry.agent_id == agent_id:
                entry.agent_offline_since = None

    def expired(self) -> list[Outstanding]:
        """Messages whose agent stayed offline for DELIVERY_TIMEOUT; they leave the ledger."""
        now = self._clock.monotonic()
        gone = [
            key
            for key, entry in self._outstanding.items()
            if entry.agent_offline_since is not None
            and now - entry.agent_offline_since >= self._delivery_timeout
        ]
        return [self._outstanding.pop(key) for key in gone]

    def outstanding_count(self) -> int:
        return len(self._outstanding)

    # -- answers still to come ---------------------------------------------------------------

    @property
    def answer_timeout(self) -> float:
        return self._answer_timeout

    def await_answer(self, frontend_id: str, message: Envelope) -> None:
        """The TEXT `message` of `frontend_id` was accepted: its answer is awaited from now."""
        key = (frontend_id, message.message_id)
        if key in self._answered or key in self._awaiting:
            return
        ref = text_ref(message.message_id)
        now = self._clock.monotonic()
        self._awaiting[key] = Awaiting(
            frontend_id,
            message.message_id,
            message.conversation_id,
            now + self._answer_timeout,
            ref,
            accepted_at=now,
        )
        self._by_ref[(frontend_id, ref)] = message.message_id
        self._askers[message.message_id] = (*self._askers.get(message.message_id, ()), frontend_id)

    def is_awaiting(self, frontend_id: str, message_id: str) -> bool:
        return (frontend_id, message_id) in self._awaiting

    def heard_of(self, frontend_id: str, message_id: str) -> None:
        """Something about the TEXT reached its sender (a chunk, a notice): its answer is on
        its way, and the deadline starts again."""
        key = (frontend_id, message_id)
        entry = self._awaiting.get(key)
        if entry is not None:
            now = self._clock.monotonic()
            if not entry.heard:
                entry.heard = True
                self._first_word(now - entry.accepted_at)
            entry.deadline = now + self._answer_timeout
            self._awaiting.move_to_end(key)

    def overdue(self) -> list[Awaiting]:
        """TEXTs past ANSWER_TIMEOUT without a word; they are no longer awaited."""
        now = self._clock.monotonic()
        late: list[Awaiting] = []
        for entry in self._awaiting.values():
            if entry.deadline > now:
                break
            late.append(entry)
        for entry in late:
            self._stop_awaiting((entry.frontend_id, entry.message_id))
        return late

    def awaiting_count(self) -> int:
        return len(self._awaiting)

    def _stop_awaiting(self, key: tuple[str, str]) -> None:
        entry = self._awaiting.pop(key, None)
        if entry is None:
            return
        frontend_id, message_id = key
        self._by_ref.pop((frontend_id, entry.ref), None)
        askers = tuple(f for f in self._askers.get(message_id, ()) if f != frontend_id)
        if askers:
            self._askers[message_id] = askers
        else:
            self._askers.pop(message_id, None)
        for answer_id in entry.answer_ids:
            self._passed.pop(answer_id, None)

    # -- whom a bare answer answers ----------------------------------------------------------

    def asker_of(
        self, message_id: str, *, agent_id: str | None, frontend_id: str | None = None
    ) -> str | None:
        """The one frontend awaiting an answer to its TEXT `message_id` (`frontend_id`, when
        the answer still names it); None when none is, or several are. A TEXT this server
        handed to an agent is answered by that agent only."""
        candidates = (frontend_id,) if frontend_id else self._askers.get(message_id, ())
        found = [
            asker
            for asker in candidates
            if (asker, message_id) in self._awaiting
            and self._may_answer(asker, message_id, agent_id)
        ]
        return found[0] if len(found) == 1 else None

    def _may_answer(self, frontend_id: str, message_id: str, agent_id: str | None) -> bool:
        entry = self._outstanding.get((frontend_id, message_id))
        return entry is None or agent_id is None or entry.agent_id == agent_id

    def text_by_ref(self, frontend_id: str, ref: str) -> str | None:
        """The awaiting TEXT of `frontend_id` whose id has the digest `ref`."""
        return self._by_ref.get((frontend_id, ref))

    def answer_passed(self, frontend_id: str, answer: Envelope) -> None:
        """An agent's answer to a TEXT of `frontend_id` went out through this server: its id is
        remembered, with what it was, until the TEXT has its final answer."""
        text_id = answer.in_reply_to_message_id or ""
        entry = self._awaiting.get((frontend_id, text_id))
        if entry is None or answer.message_id in self._passed:
            return
        is_error = answer.message_type is MessageType.ERROR
        self._passed[answer.message_id] = PassedAnswer(
            frontend_id,
            text_id,
            MessageType.ERROR if is_error else MessageType.REPLY,
            answer.error_code if is_error else None,
        )
        entry.answer_ids = (*entry.answer_ids, answer.message_id)

    def passed_answer(self, answer_id: str) -> PassedAnswer | None:
        return self._passed.get(answer_id)


def _ignore(seconds: float) -> None:
    """No one observes the timings."""
