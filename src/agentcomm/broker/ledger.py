"""What one broker remembers about the messages it routed. In memory, bounded, no I/O.

Three things, each needed by one routing rule:
- which agent each TEXT went to, until it is answered: the "unanswered" part of an agent's
  load, and the target of a CANCEL that names no receiver;
- which agent served each conversation last: stickiness;
- which agent was picked last: round-robin among equally loaded agents.

Several brokers may share one input queue, so the answer to a TEXT can reach another broker.
Entries therefore also expire after `answer_timeout` seconds, or the load of an agent would
only ever grow on the broker that did not see the answer.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_ANSWER_TIMEOUT = 300.0
DEFAULT_MAX_ENTRIES = 100_000


@dataclass(frozen=True, slots=True)
class _Assignment:
    agent_id: str
    at: float


class RoutingLedger:
    """The broker's own record of routed TEXTs, conversations and the round-robin cursor."""

    def __init__(
        self,
        *,
        answer_timeout: float = DEFAULT_ANSWER_TIMEOUT,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._answer_timeout = answer_timeout
        self._max_entries = max_entries
        self._clock = clock
        # Insertion order is age order, so expiry only ever looks at the front.
        self._assignments: OrderedDict[str, _Assignment] = OrderedDict()
        self._unanswered: Counter[str] = Counter()
        self._conversations: OrderedDict[str, str] = OrderedDict()
        self.last_pick: str | None = None

    def assign(self, message_id: str, agent_id: str, conversation_id: str | None) -> None:
        """A TEXT was handed to `agent_id`."""
        self._expire()
        self._drop(message_id)
        self._assignments[message_id] = _Assignment(agent_id, self._clock())
        self._unanswered[agent_id] += 1
        while len(self._assignments) > self._max_entries:
            self._drop(next(iter(self._assignments)))
        if conversation_id:
            self._conversations[conversation_id] = agent_id
            self._conversations.move_to_end(conversation_id)
            while len(self._conversations) > self._max_entries:
                self._conversations.popitem(last=False)
        self.last_pick = agent_id

    def answered(self, message_id: str) -> None:
        """A final REPLY or ERROR for `message_id` came back."""
        self._drop(message_id)

    def agent_for_message(self, message_id: str) -> str | None:
        self._expire()
        assignment = self._assignments.get(message_id)
        return assignment.agent_id if assignment else None

    def agent_for_conversation(self, conversation_id: str | None) -> str | None:
        return self._conversations.get(conversation_id) if conversation_id else None

    def unanswered(self, agent_id: str) -> int:
        self._expire()
        return self._unanswered.get(agent_id, 0)

    def forget_agent(self, agent_id: str) -> None:
        """The agent went offline: what it held will not be answered by it."""
        for message_id in [m for m, a in self._assignments.items() if a.agent_id == agent_id]:
            self._drop(message_id)

    def __len__(self) -> int:
        return len(self._assignments)

    def _drop(self, message_id: str) -> None:
        assignment = self._assignments.pop(message_id, None)
        if assignment is None:
            return
        self._unanswered[assignment.agent_id] -= 1
        if self._unanswered[assignment.agent_id] <= 0:
            del self._unanswered[assignment.agent_id]

    def _expire(self) -> None:
        deadline = self._clock() - self._answer_timeout
        while self._assignments:
            oldest_id, oldest = next(iter(self._assignments.items()))
            if oldest.at > deadline:
                return
            self._drop(oldest_id)
