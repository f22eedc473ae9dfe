"""Waiting without sleeping blindly: every wait has a deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

DEFAULT_TIMEOUT = 5.0
_POLL_SECONDS = 0.01


async def wait_until(
    condition: Callable[[], bool], *, timeout: float = DEFAULT_TIMEOUT, what: str = "condition"
) -> None:
    """Polls `condition` until it holds; fails the test when the deadline passes first."""
    try:
        async with asyncio.timeout(timeout):
            # Polling is the point here: the condition is state no event announces.
            while not condition():  # noqa: ASYNC110
                await asyncio.sleep(_POLL_SECONDS)
    except TimeoutError:
        raise AssertionError(f"Timed out after {timeout} s waiting for {what}") from None
