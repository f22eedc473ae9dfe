"""An event loop on a thread of its own, for tests whose body hypothesis calls synchronously
(property tests and state machines over a live hub)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    def __init__(self, default_timeout: float = 20.0) -> None:
        self.loop = asyncio.new_event_loop()
        self._default_timeout = default_timeout
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Runs `coroutine` on the loop and waits for its result (bounded)."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return future.result(self._default_timeout if timeout is None else timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        self.loop.close()
