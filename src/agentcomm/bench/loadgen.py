"""Load generation: closed loop (N in flight) and open loop (a fixed offered rate).

A target is anything with `roundtrip(slot)`: send one message on connection `slot` and return
when its answer arrived (raising on an error or a timeout). The hub's WebSocket frontends and
the floor's bare AMQP origin are both targets, so both are driven by the same code.

Open-loop latency is measured from the moment a message was due, not from when it was sent,
so a generator that falls behind cannot hide queueing (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from dataclasses import dataclass, field
from typing import Protocol

from agentcomm.bench.stats import LatencySummary, rate, summarize

ROUNDTRIP_TIMEOUT = 10.0


class Target(Protocol):
    @property
    def slots(self) -> int:
        """How many connections the target has (messages may share one)."""

    async def roundtrip(self, slot: int) -> None:
        """One message there and its answer back; raises when it fails or times out."""


@dataclass
class Measurement:
    """What one load phase saw."""

    mode: str  # "closed" or "open"
    seconds: float
    in_flight: int | None = None
    offered_per_s: float | None = None
    completed: int = 0
    errors: int = 0
    latencies_s: list[float] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)

    @property
    def per_s(self) -> float:
        return rate(self.completed, self.seconds)

    @property
    def latency(self) -> LatencySummary:
        return summarize(self.latencies_s)

    def failed(self, exc: BaseException) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(f"{type(exc).__name__}: {exc}"[:200])


async def closed_loop(
    target: Target, in_flight: int, seconds: float, *, warmup: float = 0.0
) -> Measurement:
    """`in_flight` senders, each sending its next message when the last was answered.

    Only round trips that start after the warm-up and end within the window are counted.
    """
    loop = asyncio.get_running_loop()
    measurement = Measurement(mode="closed", seconds=seconds, in_flight=in_flight)
    start = loop.time() + warmup
    end = start + seconds

    # Each round trip goes out on the next connection in turn, so that no single frontend
    # sends faster than a person would (the hub rate-limits each socket).
    slots = itertools.count()

    async def sender(index: int) -> None:
        while True:
            slot = next(slots) % target.slots
            sent = time.perf_counter()
            sent_loop = loop.time()
            if sent_loop >= end:
                return
            try:
                await target.roundtrip(slot)
            except Exception as exc:
                if sent_loop >= start:
                    measurement.failed(exc)
                await asyncio.sleep(0.01)
                continue
            done_loop = loop.time()
            if sent_loop >= start and done_loop <= end:
                measurement.completed += 1
                measurement.latencies_s.append(time.perf_counter() - sent)

    senders = [asyncio.create_task(sender(index)) for index in range(in_flight)]
    await _finish(senders, end - loop.time() + ROUNDTRIP_TIMEOUT + 2)
    return measurement


async def open_loop(target: Target, per_s: float, seconds: float) -> Measurement:
    """Messages due at a fixed rate, spread over the target's connections round-robin."""
    loop = asyncio.get_running_loop()
    measurement = Measurement(mode="open", seconds=seconds, offered_per_s=per_s)
    total = max(1, int(per_s * seconds))
    start = loop.time() + 0.05
    end = start + seconds
    interval = 1.0 / per_s
    tasks: set[asyncio.Task[None]] = set()

    last_done = start

    async def one(slot: int, due: float) -> None:
        nonlocal last_done
        try:
            await target.roundtrip(slot)
        except Exception as exc:
            measurement.failed(exc)
            return
        done = loop.time()
        last_done = max(last_done, done)
        measurement.completed += 1
        measurement.latencies_s.append(done - due)

    for index in range(total):
        due = start + index * interval
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(index % target.slots, due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await _finish(list(tasks), max(0.0, end - loop.time()) + ROUNDTRIP_TIMEOUT + 2)
    # The achieved rate: everything sent in the window, over the time until the last answer.
    # An overloaded system drains its backlog after the window at the rate it can do.
    measurement.seconds = max(seconds, last_done - start)
    return measurement


async def _finish(tasks: list[asyncio.Task[None]], timeout: float) -> None:
    """Waits for the load tasks; cancels whatever is left after `timeout` (or on cancel)."""
    if not tasks:
        return
    try:
        await asyncio.wait(tasks, timeout=timeout)
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)
