"""The hub's own background tasks: owned, so that stop() cancels and awaits every one."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from agentcomm.bus.base import BusError

log = logging.getLogger(__name__)


class OwnedTasks:
    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[None]] = []

    def every(self, interval: float, action: Callable[[], Awaitable[None]], name: str) -> None:
        """Runs `action` every `interval` seconds until cancelled. A failure is logged and the
        action runs again next time: one bad sweep must not end the periodic work."""
        self._tasks.append(asyncio.create_task(_every(interval, action), name=name))

    async def cancel_all(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()


async def _every(interval: float, action: Callable[[], Awaitable[None]]) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await action()
        except BusError as exc:
            log.warning("Periodic task %s: bus unavailable (%s)", action.__name__, exc)
        except Exception:
            log.exception("Periodic task %s failed; it runs again next interval", action)
