"""Streamed replies put back in order before they reach their frontend.

With several brokers consuming `broker_input_queue`, the chunks of one reply are routed by
whichever broker takes them, so they can reach the server out of order, and the final `REPLY`
can overtake its last chunks. Each stream is kept per (frontend, reply id): chunks are released
in `seq` order without gaps, and the final `REPLY` waits until every chunk was released (its
metadata `chunk_count` says how many there are; without it, until the released chunks add up to
its text) — or, if a chunk never comes, at most `hold_seconds`.

What waits is bounded, because an agent decides what it sends: chunks behind a gap that does
not fill are held at most `timeout` seconds, and at most `stream_bytes` per reply,
`agent_bytes` per sending agent and `total_bytes` in all (and MAX_WAITING_CHUNKS per reply).
A stream past any of these is broken: its waiting chunks are dropped, its frontend gets its
final REPLY when it is already here, else `ERROR stream_incomplete` as the answer to the TEXT,
and whatever else comes for that reply is dropped.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field

from agentcomm.core.clock import Clock
from agentcomm.protocol.models import CHUNK_COUNT_KEY, Envelope
from agentcomm.protocol.rules import SERVER_SENDER, error_envelope
from agentcomm.protocol.vocabulary import ErrorCode, MessageType

log = logging.getLogger(__name__)

StreamKey = tuple[str, str]

# A stream with no new chunk for this long is forgotten (its agent went away mid-reply).
IDLE_STREAM_SECONDS = 120.0
# Chunks kept waiting for a gap to fill, per stream.
MAX_WAITING_CHUNKS = 1000
# Broken streams remembered, to drop what still comes for them.
BROKEN_STREAMS_KEPT = 10_000
# A held message's share of memory besides its text.
_ENVELOPE_OVERHEAD = 256

# The defaults of the bounds (STREAM_REORDER_* settings).
DEFAULT_STREAM_BYTES = 1024 * 1024
DEFAULT_AGENT_BYTES = 8 * 1024 * 1024
DEFAULT_TOTAL_BYTES = 64 * 1024 * 1024
DEFAULT_TIMEOUT = 30.0


def held_size(message: Envelope) -> int:
    """What holding `message` costs, about: its texts and the envelope around them."""
    return len(message.text_delta or "") + len(message.text_payload or "") + _ENVELOPE_OVERHEAD


@dataclass
class _Stream:
    last_activity: float
    sender: str
    next_seq: int = 0
    text: list[str] = field(default_factory=list)
    waiting: dict[int, Envelope] = field(default_factory=dict)
    # Since when the oldest chunk still waiting has waited.
    waiting_since: float | None = None
    final: Envelope | None = None
    final_since: float = 0.0
    # Bytes of what waits here: chunks and the final.
    held: int = 0
    # The TEXT this reply answers.
    answers: str | None = None

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
    def __init__(
        self,
        clock: Clock,
        *,
        hold_seconds: float = 2.0,
        timeout: float = DEFAULT_TIMEOUT,
        stream_bytes: int = DEFAULT_STREAM_BYTES,
        agent_bytes: int = DEFAULT_AGENT_BYTES,
        total_bytes: int = DEFAULT_TOTAL_BYTES,
    ) -> None:
        self._clock = clock
        self._hold_seconds = hold_seconds
        self._timeout = timeout
        self._stream_bytes = stream_bytes
        self._agent_bytes = agent_bytes
        self._total_bytes = total_bytes
        self._streams: dict[StreamKey, _Stream] = {}
        self._held_by_agent: dict[str, int] = {}
        self.held_bytes = 0
        self._broken: OrderedDict[StreamKey, None] = OrderedDict()

    def accept(self, frontend_id: str, message: Envelope) -> list[Envelope]:
        """What to send to the frontend now, in order (possibly nothing yet)."""
        key = (frontend_id, message.message_id)
        if message.message_type not in (MessageType.REPLY_CHUNK, MessageType.REPLY):
            return [message]
        if key in self._broken:
            return []  # already answered for; what still comes adds nothing
        now = self._clock.monotonic()
        if message.message_type is MessageType.REPLY_CHUNK:
            return self._accept_chunk(key, message, now)
        held = self._streams.get(key)
        if held is None:
            if not chunk_count(message):
                return [message]
            # The final overtook every one of its chunks: wait for them.
            held = self._streams[key] = _Stream(last_activity=now, sender=_sender(message))
        stream = held
        stream.answers = stream.answers or message.in_reply_to_message_id
        if stream.final is not None:
            self._release(stream, held_size(stream.final))
        stream.final = message
        stream.final_since = now
        self._hold(stream, held_size(message))
        if stream.complete():
            self._forget(key, stream)
            return [message]
        return self._within_bounds(key, stream, [])

    def _accept_chunk(self, key: StreamKey, message: Envelope, now: float) -> list[Envelope]:
        stream = self._streams.get(key)
        if stream is None:
            stream = self._streams[key] = _Stream(last_activity=now, sender=_sender(message))
        stream.last_activity = now
        stream.answers = stream.answers or message.in_reply_to_message_id
        seq = message.seq or 0
        if seq < stream.next_seq or seq in stream.waiting:
            return []  # a copy of a chunk already handled
        stream.waiting[seq] = message
        self._hold(stream, held_size(message))
        ready = stream.release_in_order()
        for chunk in ready:
            self._release(stream, held_size(chunk))
        if not stream.waiting:
            stream.waiting_since = None
        elif stream.waiting_since is None or ready:
            # A gap (a new one, once the old filled): its chunks wait from now.
            stream.waiting_since = now
        if stream.complete():
            assert stream.final is not None
            ready.append(stream.final)
            self._forget(key, stream)
            return ready
        return self._within_bounds(key, stream, ready)

    def _within_bounds(
        self, key: StreamKey, stream: _Stream, ready: list[Envelope]
    ) -> list[Envelope]:
        why = None
        if len(stream.waiting) > MAX_WAITING_CHUNKS:
            why = f"more than {MAX_WAITING_CHUNKS} chunks waited for a missing one"
        elif stream.held > self._stream_bytes:
            why = f"more than {self._stream_bytes} bytes of it waited for a missing chunk"
        elif self._held_by_agent.get(stream.sender, 0) > self._agent_bytes:
            why = f"its agent had more than {self._agent_bytes} bytes waiting in all"
        elif self.held_bytes > self._total_bytes:
            why = f"more than {self._total_bytes} bytes of replies waited in all"
        if why is None:
            return ready
        return ready + self._break(key, stream, why)

    def overdue(self) -> list[tuple[str, list[Envelope]]]:
        """Held finals whose missing chunks did not come in time, with what did come; errors
        for streams whose chunks waited past the timeout for one that did not come; and
        forgets streams that went quiet without a final."""
        now = self._clock.monotonic()
        released: list[tuple[str, list[Envelope]]] = []
        for key, stream in list(self._streams.items()):
            if stream.final is not None and now - stream.final_since >= self._hold_seconds:
                ready = [stream.waiting[seq] for seq in sorted(stream.waiting)]
                released.append((key[0], [*ready, stream.final]))
                self._forget(key, stream)
            elif stream.waiting_since is not None and now - stream.waiting_since >= self._timeout:
                why = f"a missing chunk did not come within {self._timeout:g} s"
                released.append((key[0], self._break(key, stream, why)))
            elif stream.final is None and now - stream.last_activity >= IDLE_STREAM_SECONDS:
                self._forget(key, stream)
        return released

    def active(self) -> int:
        return len(self._streams)

    # -- bookkeeping -----------------------------------------------------------------------

    def _break(self, key: StreamKey, stream: _Stream, why: str) -> list[Envelope]:
        """Drops what waits of `stream`; returns what its frontend gets instead."""
        frontend_id, reply_id = key
        dropped = len(stream.waiting)
        final = stream.final
        self._forget(key, stream)
        self._broken[key] = None
        if len(self._broken) > BROKEN_STREAMS_KEPT:
            self._broken.popitem(last=False)
        log.warning(
            "Reply %s from %s to %s: %s; %d chunks dropped",
            reply_id,
            stream.sender or "?",
            frontend_id,
            why,
            dropped,
        )
        if final is not None:
            return [final]  # the whole text: the frontend misses only the chunks
        return [
            error_envelope(
                sender_id=SERVER_SENDER,
                receiver_id=frontend_id,
                code=ErrorCode.STREAM_INCOMPLETE,
                text=f"The streamed reply {reply_id} could not be put back in order ({why}); "
                "its waiting chunks were dropped.",
                in_reply_to=stream.answers,
            )
        ]

    def _hold(self, stream: _Stream, size: int) -> None:
        stream.held += size
        self._held_by_agent[stream.sender] = self._held_by_agent.get(stream.sender, 0) + size
        self.held_bytes += size

    def _release(self, stream: _Stream, size: int) -> None:
        stream.held -= size
        left = self._held_by_agent.get(stream.sender, 0) - size
        if left > 0:
            self._held_by_agent[stream.sender] = left
        else:
            self._held_by_agent.pop(stream.sender, None)
        self.held_bytes -= size

    def _forget(self, key: StreamKey, stream: _Stream) -> None:
        self._release(stream, stream.held)
        stream.waiting.clear()
        stream.final = None
        self._streams.pop(key, None)


def _sender(message: Envelope) -> str:
    return message.sender_id or ""
