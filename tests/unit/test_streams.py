"""Streamed replies reach their frontend in seq order even when they arrive shuffled."""

from __future__ import annotations

import random

from agentcomm.core.clock import ManualClock
from agentcomm.core.streams import ReplyStreams
from agentcomm.protocol.models import Envelope
from agentcomm.protocol.vocabulary import MessageType

WORDS = ["one ", "two ", "three ", "four ", "five"]


def chunk(seq: int, reply_id: str = "r1") -> Envelope:
    return Envelope(
        message_type=MessageType.REPLY_CHUNK,
        message_id=reply_id,
        seq=seq,
        text_delta=WORDS[seq],
        in_reply_to_message_id="t1",
    )


def final(reply_id: str = "r1", *, counted: bool = True) -> Envelope:
    return Envelope(
        message_type=MessageType.REPLY,
        message_id=reply_id,
        text_payload="".join(WORDS),
        in_reply_to_message_id="t1",
        metadata={"chunk_count": str(len(WORDS))} if counted else None,
    )


def sent_order(streams: ReplyStreams, arrivals: list[Envelope]) -> list[str]:
    out: list[str] = []
    for message in arrivals:
        for ready in streams.accept("web_a", message):
            out.append(f"{ready.message_type.value}:{ready.seq}")
    return out


def test_in_order_stream_passes_straight_through() -> None:
    streams = ReplyStreams(ManualClock())
    arrivals = [*(chunk(seq) for seq in range(5)), final()]
    assert sent_order(streams, arrivals) == [
        *(f"REPLY_CHUNK:{seq}" for seq in range(5)),
        "REPLY:None",
    ]
    assert streams.active() == 0


def test_any_shuffle_comes_out_in_order_with_the_final_last() -> None:
    rng = random.Random(7)
    for _ in range(200):
        arrivals = [*(chunk(seq) for seq in range(5)), final()]
        rng.shuffle(arrivals)
        streams = ReplyStreams(ManualClock())
        assert sent_order(streams, arrivals) == [
            *(f"REPLY_CHUNK:{seq}" for seq in range(5)),
            "REPLY:None",
        ]
        assert streams.active() == 0


def test_duplicate_chunks_are_sent_once() -> None:
    streams = ReplyStreams(ManualClock())
    arrivals = [chunk(0), chunk(0), chunk(1), chunk(1), chunk(2), chunk(3), chunk(4), final()]
    assert sent_order(streams, arrivals).count("REPLY_CHUNK:1") == 1


def test_a_final_waiting_for_a_lost_chunk_goes_out_after_the_hold() -> None:
    clock = ManualClock()
    streams = ReplyStreams(clock, hold_seconds=2.0)
    arrivals = [chunk(0), chunk(2), chunk(3), chunk(4), final()]
    assert sent_order(streams, arrivals) == ["REPLY_CHUNK:0"]
    assert streams.overdue() == []
    clock.advance(2.0)
    [(frontend_id, released)] = streams.overdue()
    assert frontend_id == "web_a"
    assert [message.seq for message in released] == [2, 3, 4, None]
    assert released[-1].message_type is MessageType.REPLY
    assert streams.active() == 0


def test_a_reply_without_chunks_is_not_held() -> None:
    streams = ReplyStreams(ManualClock())
    assert sent_order(streams, [final("plain", counted=False)]) == ["REPLY:None"]


def test_without_a_chunk_count_the_text_tells_when_the_stream_is_complete() -> None:
    streams = ReplyStreams(ManualClock())
    arrivals = [chunk(0), chunk(1), chunk(3), final(counted=False), chunk(2), chunk(4)]
    assert sent_order(streams, arrivals) == [
        *(f"REPLY_CHUNK:{seq}" for seq in range(5)),
        "REPLY:None",
    ]
