"""The stream benchmark's arithmetic and its agent's tokens: what a frontend counts, when a
token is late, how a paced answer is scheduled. No I/O."""

from __future__ import annotations

import asyncio

import pytest

from agentcomm.bench.streamer import parse_request, produce, token
from agentcomm.bench.streamload import Answer
from agentcomm.bench.streamsteps import Window, saturation_summary


def test_a_request_names_tokens_and_rate() -> None:
    assert parse_request("300 50") == (300, 50.0)
    assert parse_request(" 2  0 ") == (2, 0.0)


@pytest.mark.parametrize("text", ["", "300", "a b", "0 50", "5 -1", "1 2 3"])
def test_a_malformed_request_is_refused_with_a_sentence(text: str) -> None:
    with pytest.raises(ValueError, match=r"tokens|expected|invalid"):
        parse_request(text)


def test_every_token_ends_with_one_space_so_merged_chunks_count_right() -> None:
    merged = token(7) + token(8) + token(9)
    assert merged.count(" ") == 3


def test_paced_tokens_keep_to_their_schedule_without_drift() -> None:
    async def scenario() -> list[float]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        seen = []
        async for _ in produce(5, 100.0):
            seen.append(loop.time() - start)
        return seen

    seen = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert len(seen) == 5
    # Token i is not produced before i / rate (sleeps never end early).
    for index, at in enumerate(seen):
        assert at >= index / 100.0 - 0.002


def test_lateness_is_against_the_schedule_of_the_first_token() -> None:
    answer = Answer(tokens=4, per_s=10.0, sent=0.0)
    # First token at 1.0; then on time, 50 ms late, and two tokens merged into one chunk.
    answer.chunks = [(1.0, 1), (1.1, 1), (1.25, 2)]
    late = answer.lateness()
    assert late == pytest.approx([0.0, 0.0, 0.05, 0.0])
    assert answer.token_times() == [1.0, 1.1, 1.25, 1.25]
    assert answer.gaps() == pytest.approx([0.1, 0.15])
    assert answer.first_token_s == 1.0


def test_saturation_counts_tokens_that_arrived_inside_the_window() -> None:
    early = Answer(tokens=3, per_s=0.0, sent=-1.0)
    early.chunks = [(-0.5, 1), (0.5, 1), (1.5, 1)]
    inside = Answer(tokens=2, per_s=0.0, sent=0.2)
    inside.chunks = [(0.3, 2), (2.5, 5)]
    window = Window(start=0.0, end=2.0, answers=[early, inside])
    summary = saturation_summary(window)
    # Inside [0, 2]: 1 + 1 from the early answer, 2 from the other.
    assert summary["tokens_per_s"] == 2.0
    assert summary["frames_per_s"] == 1.5
    # Only answers begun inside the window give a first-token time.
    assert summary["answers"] == 1
    assert summary["first_token_p50_ms"] == pytest.approx(100.0)
