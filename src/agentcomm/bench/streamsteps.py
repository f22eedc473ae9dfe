"""The two loads of the `stream` benchmark, on any target that can `ask` for an answer.

- `saturate`: N askers, each asking for its next answer (tokens as fast as the agent can) as
  soon as its last one finished; `saturation_summary` reads tokens and frames per second, time
  to first token and the gaps between chunks out of it.
- `paced_step`: N paced answers at once (their starts spread over a second); the delay the
  system added to each token against its schedule, and the harness's own stalls beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from agentcomm.bench.stats import rounded, summarize
from agentcomm.bench.streamload import Answer, AnswerFailed

# Extra seconds an answer may take beyond its own length before it counts as failed.
ANSWER_SLACK = 30.0

Ask = Callable[[int, int, float, float], Awaitable[Answer]]


@dataclass
class Window:
    """What one closed loop saw: the answers begun in it, and the window itself."""

    start: float
    end: float
    answers: list[Answer] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return self.end - self.start

    def arrivals(self) -> list[tuple[float, int]]:
        return [c for a in self.answers for c in a.chunks if self.start <= c[0] <= self.end]


async def saturate(
    ask: Ask, streams: int, tokens: int, seconds: float, warmup: float, *, sockets: int = 0
) -> Window:
    """`streams` askers, each asking for its next answer when its last one finished, on the
    next of `sockets` sockets in turn (at least one per asker), so that no socket asks faster
    than a person would (the hub rate-limits each one)."""
    now = time.perf_counter()
    window = Window(now + warmup, now + warmup + seconds)
    timeout = seconds + ANSWER_SLACK
    turns = itertools.count()
    sockets = max(sockets, streams)

    async def asker() -> None:
        while time.perf_counter() < window.end:
            slot = next(turns) % sockets
            try:
                answer = await ask(slot, tokens, 0.0, timeout)
            except AnswerFailed as exc:
                window.failures.append(str(exc)[:200])
                await asyncio.sleep(0.05)
                continue
            # Every answer: its tokens that arrived within the window count, also when the
            # answer began before it (a slow answer may be longer than the window).
            window.answers.append(answer)

    await asyncio.gather(*(asker() for _ in range(streams)))
    return window


def saturation_summary(window: Window) -> dict[str, Any]:
    arrivals = window.arrivals()
    tokens = sum(count for _, count in arrivals)
    begun = [a for a in window.answers if window.start <= a.sent <= window.end]
    first = summarize([a.first_token_s or 0.0 for a in begun if a.chunks])
    gaps = summarize([g for a in begun for g in a.gaps()])
    return {
        "tokens_per_s": rounded(tokens / window.seconds, 1),
        "frames_per_s": rounded(len(arrivals) / window.seconds, 1),
        "answers": len(begun),
        "first_token_p50_ms": rounded(first.p50_ms),
        "first_token_p99_ms": rounded(first.p99_ms),
        "gap_p50_ms": rounded(gaps.p50_ms),
        "gap_p99_ms": rounded(gaps.p99_ms),
        "out_of_order": sum(a.out_of_order for a in window.answers),
        "errors": len(window.failures),
        **({"error_samples": window.failures[:3]} if window.failures else {}),
    }


async def paced_step(ask: Ask, streams: int, tokens: int, per_s: float) -> dict[str, Any]:
    """`streams` answers at once, paced; whether the added delay stayed within the bound."""
    spread = 1.0
    timeout = tokens / per_s + spread + ANSWER_SLACK

    async def one(index: int) -> Answer:
        await asyncio.sleep(spread * index / streams)
        return await ask(index, tokens, per_s, timeout)

    lag = LoopLag()
    async with lag.watching():
        results = await asyncio.gather(*(one(i) for i in range(streams)), return_exceptions=True)
    answers = [r for r in results if isinstance(r, Answer)]
    failures = [str(r)[:200] for r in results if isinstance(r, BaseException)]
    late = summarize([x for a in answers for x in a.lateness()])
    first = summarize([a.first_token_s or 0.0 for a in answers if a.chunks])
    out: dict[str, Any] = {
        "streams": streams,
        "added_delay_p50_ms": rounded(late.p50_ms),
        "added_delay_p99_ms": rounded(late.p99_ms),
        "added_delay_max_ms": rounded(late.max_ms),
        "first_token_p50_ms": rounded(first.p50_ms),
        "out_of_order": sum(a.out_of_order for a in answers),
        "errors": len(failures),
        # The harness's own stalls: a late token it saw late only because it was busy.
        "harness_lag_max_ms": rounded(lag.max_s * 1000),
    }
    if failures:
        out["error_samples"] = failures[:3]
    return out


class LoopLag:
    """The longest the harness's event loop was late, sampled every 5 ms."""

    def __init__(self) -> None:
        self.max_s = 0.0

    @contextlib.asynccontextmanager
    async def watching(self) -> AsyncIterator[None]:
        async def sample() -> None:
            loop = asyncio.get_running_loop()
            while True:
                before = loop.time()
                await asyncio.sleep(0.005)
                self.max_s = max(self.max_s, loop.time() - before - 0.005)

        task = asyncio.create_task(sample())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
