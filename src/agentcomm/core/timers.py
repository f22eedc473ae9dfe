"""One-shot timers as a dependency, so that deadlines in the core run on the event loop in the
server and by hand in tests (with `ManualClock`)."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Protocol

from agentcomm.core.clock import ManualClock


class Timer(Protocol):
    def cancel(self) -> None:
        """The callback will not run (no effect once it ran)."""


class Timers(Protocol):
    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """Runs `callback()` once, `delay` seconds from now."""


class LoopTimers:
    """Timers on the running asyncio loop."""

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return asyncio.get_running_loop().call_later(delay, callback)


class _ManualTimer:
    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback: Callable[[], None] | None = callback

    def cancel(self) -> None:
        self.callback = None


class ManualTimers:
    """Timers that run only when told to, at the time of a ManualClock."""

    def __init__(self, clock: ManualClock) -> None:
        self._clock = clock
        self._order = itertools.count()
        self._due: list[tuple[float, int, _ManualTimer]] = []

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        timer = _ManualTimer(callback)
        heapq.heappush(self._due, (self._clock.monotonic() + delay, next(self._order), timer))
        return timer

    def advance(self, seconds: float) -> int:
        """Moves the clock on and runs every timer now due, in order; returns how many ran."""
        self._clock.advance(seconds)
        ran = 0
        while self._due and self._due[0][0] <= self._clock.monotonic():
            _, _, timer = heapq.heappop(self._due)
            if timer.callback is not None:
                callback, timer.callback = timer.callback, None
                callback()
                ran += 1
        return ran

    @property
    def pending(self) -> int:
        return sum(1 for _, _, timer in self._due if timer.callback is not None)
