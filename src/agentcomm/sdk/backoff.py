"""Exponential backoff with a cap and jitter, for reconnecting to the server and the bus."""

from __future__ import annotations

import asyncio
import random


class Backoff:
    """Delays of initial, initial*factor, ... up to `cap` seconds, each spread by +-`jitter`.

    Jitter keeps many agents that lost the same server from reconnecting in lockstep.
    """

    def __init__(
        self,
        initial: float = 0.25,
        cap: float = 15.0,
        factor: float = 2.0,
        jitter: float = 0.2,
        rng: random.Random | None = None,
    ) -> None:
        if initial <= 0 or cap < initial or factor < 1 or not 0 <= jitter < 1:
            raise ValueError("Backoff needs 0 < initial <= cap, factor >= 1 and 0 <= jitter < 1.")
        self._initial = initial
        self._cap = cap
        self._factor = factor
        self._jitter = jitter
        self._rng = rng or random.Random()
        self._attempt = 0

    def next_delay(self) -> float:
        base = min(self._cap, self._initial * self._factor**self._attempt)
        self._attempt += 1
        spread = base * self._jitter
        return min(self._cap, max(0.0, base + self._rng.uniform(-spread, spread)))

    def reset(self) -> None:
        self._attempt = 0

    async def sleep(self) -> None:
        await asyncio.sleep(self.next_delay())
