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


def big_chunk(
    seq: int, reply_id: str = "r1", sender: str = "agent-a", size: int = 1000
) -> Envelope:
    return Envelope(
        message_type=MessageType.REPLY_CHUNK,
        message_id=reply_id,
        sender_id=sender,
        seq=seq,
        text_delta="x" * size,
        in_reply_to_message_id=f"t-{reply_id}",
    )


def kinds(messages: list[Envelope]) -> list[str]:
    return [
        f"{m.message_type.value}:{m.seq if m.seq is not None else m.error_code}" for m in messages
    ]


def test_chunks_behind_a_gap_past_the_stream_bound_break_it_with_one_error() -> None:
    streams = ReplyStreams(ManualClock(), stream_bytes=5000)
    sent: list[Envelope] = []
    for seq in range(1, 10):  # seq 0 never comes
        sent += streams.accept("web_a", big_chunk(seq))
    assert kinds(sent) == ["ERROR:stream_incomplete"]
    assert sent[0].in_reply_to_message_id == "t-r1"
    assert sent[0].receiver_id == "web_a"
    assert streams.held_bytes == 0
    assert streams.active() == 0
    # What still comes for it is dropped, the missing chunk and the final too.
    assert streams.accept("web_a", big_chunk(0)) == []
    assert streams.accept("web_a", big_chunk(12)) == []
    assert streams.active() == 0


def test_a_broken_stream_whose_final_is_here_gets_its_final_not_an_error() -> None:
    streams = ReplyStreams(ManualClock(), stream_bytes=5000)
    held_final = final()
    assert streams.accept("web_a", held_final) == []
    sent: list[Envelope] = []
    for seq in range(1, 10):
        sent += streams.accept("web_a", big_chunk(seq))
    assert sent == [held_final]


def test_one_agent_cannot_hold_more_than_its_share_across_replies() -> None:
    streams = ReplyStreams(ManualClock(), stream_bytes=100_000, agent_bytes=8000)
    sent: list[Envelope] = []
    for reply in range(20):
        sent += streams.accept("web_a", big_chunk(1, f"r{reply}", size=1000))
    assert kinds(sent).count("ERROR:stream_incomplete") > 0
    assert streams.held_bytes <= 8000 + 1300
    # Another agent's stream is untouched, and streams in order never wait.
    assert kinds(streams.accept("web_a", big_chunk(1, "other", sender="agent-b"))) == []
    assert kinds(streams.accept("web_a", big_chunk(0, "other", sender="agent-b"))) == [
        "REPLY_CHUNK:0",
        "REPLY_CHUNK:1",
    ]


def test_all_agents_together_are_bounded_too() -> None:
    streams = ReplyStreams(ManualClock(), agent_bytes=100_000, total_bytes=10_000)
    sent: list[Envelope] = []
    for agent in range(30):
        sent += streams.accept("web_a", big_chunk(1, f"r{agent}", sender=f"agent-{agent}"))
    assert kinds(sent).count("ERROR:stream_incomplete") > 0
    assert streams.held_bytes <= 10_000 + 1300


def test_chunks_waiting_past_the_timeout_are_dropped_with_an_error() -> None:
    clock = ManualClock()
    streams = ReplyStreams(clock, timeout=10.0)
    assert streams.accept("web_a", big_chunk(1)) == []
    clock.advance(9)
    assert streams.overdue() == []
    # More chunks behind the same gap do not reset its clock.
    assert streams.accept("web_a", big_chunk(2)) == []
    clock.advance(1)
    [(frontend_id, messages)] = streams.overdue()
    assert frontend_id == "web_a"
    assert kinds(messages) == ["ERROR:stream_incomplete"]
    assert streams.held_bytes == 0


def test_a_gap_that_fills_starts_the_clock_again_for_the_next() -> None:
    clock = ManualClock()
    streams = ReplyStreams(clock, timeout=10.0)
    streams.accept("web_a", big_chunk(1))
    clock.advance(9)
    assert kinds(streams.accept("web_a", big_chunk(0))) == ["REPLY_CHUNK:0", "REPLY_CHUNK:1"]
    streams.accept("web_a", big_chunk(3))
    clock.advance(9)
    assert streams.overdue() == []
