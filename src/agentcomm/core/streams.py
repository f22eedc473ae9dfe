"""Streamed replies put back in order before they reach their frontend.

With several brokers consuming `broker_input_queue`, the chunks of one reply are routed by
whichever broker takes them, so they can reach the server out of order, and the final `REPLY`
can overtake its last chunks. Each stream is kept per (frontend, reply id): chunks are released
in `seq` order without gaps, and the final `REPLY` waits until every chunk was released (its
metadata `chunk_count` says how many there are; without it, until the released chunks add up to
its text) — or, if a chunk never comes, at most `hold_seconds`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agentcomm.core.clock import Clock
from agentcomm.protocol.models import CHUNK_COUNT_KEY, Envelope
from agentcomm.protocol.vocabulary import MessageType

StreamKey = tuple[str, str]

# A stream with no new chunk for this long is forgotten (its agent went away mid-reply).
IDLE_STREAM_SECONDS = 120.0
# Chunks kept waiting for a gap to fill, per stream; beyond that the gap is given up on.
MAX_WAITING_CHUNKS = 1000


@dataclass
class _Stream:
    last_activity: float
    next_seq: int = 0
    text: list[str] = field(default_factory=list)
    waiting: dict[int, Envelope] = field(default_factory=dict)
    final: Envelope | None = None
    final_since: float = 0.0

    def release_in_order(self) -> list[Envelope]:
        ready: list[Envelope] = []
        while self.next_seq in self.waiting:
            chunk = self.waiting.pop(self.next_seq)
            ready.append(chunk)
            self.text.append(chunk.text_delta or "")
            self.next_seq += 1
        return ready

    def complete(self) -> bool:
        if self.final is None or self.waiting:
            return False
        expected = chunk_count(self.final)
        if expected is not None:
            return self.next_seq >= expected
        return "".join(self.text) == (self.final.text_payload or "")


def chunk_count(final: Envelope) -> int | None:
    """The number of chunks a final REPLY says came before it, when it says so."""
    raw = (final.metadata or {}).get(CHUNK_COUNT_KEY)
    try:
        return int(raw) if raw is not None else None
    except (TypeError, ValueError):
        return None


class ReplyStreams:
    def __init__(self, clock: Clock, *, hold_seconds: float = 2.0) -> None:
        self._clock = clock
        self._hold_seconds = hold_seconds
        self._streams: dict[StreamKey, _Stream] = {}

    def accept(self, frontend_id: str, message: Envelope) -> list[Envelope]:
        """What to send to the frontend now, in order (possibly nothing yet)."""
        key = (frontend_id, message.message_id)
        now = self._clock.monotonic()
        if message.message_type is MessageType.REPLY_CHUNK:
            stream = self._streams.setdefault(key, _Stream(last_activity=now))
            stream.last_activity = now
            seq = message.seq or 0
            if seq < stream.next_seq or seq in stream.waiting:
                return []  # a copy of a chunk already handled
            stream.waiting[seq] = message
            if len(stream.waiting) > MAX_WAITING_CHUNKS:
                stream.next_seq = min(stream.waiting)  # give up on the gap
            ready = stream.release_in_order()
            if stream.complete():
                assert stream.final is not None
                ready.append(stream.final)
                del self._streams[key]
            return ready
        held = self._streams.get(key)
        if message.message_type is not MessageType.REPLY:
            return [message]
        if held is None:
            if not chunk_count(message):
                return [message]
            # The final overtook every one of its chunks: wait for them.
            held = self._streams[key] = _Stream(last_activity=now)
        stream = held
        stream.final = message
        stream.final_since = now
        if stream.complete():
            del self._streams[key]
            return [message]
        return []

    def overdue(self) -> list[tuple[str, list[Envelope]]]:
        """Held finals whose missing chunks did not come in time, with what did come; and
        forgets streams that went quiet without a final."""
        now = self._clock.monotonic()
        released: list[tuple[str, list[Envelope]]] = []
        for key, stream in list(self._streams.items()):
            if stream.final is not None and now - stream.final_since >= self._hold_seconds:
                ready = [stream.waiting[seq] for seq in sorted(stream.waiting)]
                released.append((key[0], [*ready, stream.final]))
                del self._streams[key]
            elif stream.final is None and now - stream.last_activity >= IDLE_STREAM_SECONDS:
                del self._streams[key]
        return released

    def active(self) -> int:
        return len(self._streams)
