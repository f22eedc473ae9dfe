"""A token bucket per connection: bursts are fine, a sustained flood is not."""

from __future__ import annotations

from agentcomm.core.clock import Clock


class TokenBucket:
    def __init__(self, clock: Clock, *, rate: float, burst: int) -> None:
        self._clock = clock
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._updated = clock.monotonic()

    def take(self) -> bool:
        """Spends one token; False when the bucket is empty (the caller is over its rate)."""
        now = self._clock.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._updated) * self._rate)
        self._updated = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
