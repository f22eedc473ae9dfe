"""A plain progress bar on stderr: redrawn in place on a terminal, one line per step elsewhere.

stdout stays clean for the table or the JSON lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from typing import TextIO

_WIDTH = 28
_REDRAW_SECONDS = 0.2


class Progress:
    """Shows which step runs and how far along it is (by the time it is planned to take)."""

    def __init__(self, stream: TextIO | None = None, *, enabled: bool = True) -> None:
        self._stream = stream or sys.stderr
        self._enabled = enabled
        self._tty = enabled and self._stream.isatty()
        self.scenario = ""

    def note(self, text: str) -> None:
        """A line that stays (a step finished, a warning)."""
        if not self._enabled:
            return
        self._clear()
        print(f"[bench] {self._prefix()}{text}", file=self._stream, flush=True)

    @contextlib.asynccontextmanager
    async def step(self, label: str, planned_seconds: float) -> AsyncIterator[None]:
        """Draws a bar that fills over `planned_seconds` while the body runs."""
        if not self._enabled:
            yield
            return
        started = time.monotonic()
        if not self._tty:
            print(
                f"[bench] {self._prefix()}{label} (~{planned_seconds:.0f} s)",
                file=self._stream,
                flush=True,
            )
            yield
            return
        drawer = asyncio.create_task(self._draw(label, planned_seconds, started))
        try:
            yield
        finally:
            drawer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drawer
            self._clear()

    async def _draw(self, label: str, planned: float, started: float) -> None:
        while True:
            elapsed = time.monotonic() - started
            done = min(1.0, elapsed / planned) if planned > 0 else 1.0
            filled = int(done * _WIDTH)
            bar = "#" * filled + "." * (_WIDTH - filled)
            line = f"[{bar}] {done * 100:3.0f}% {self._prefix()}{label} {elapsed:5.1f}s"
            self._stream.write("\r" + line[:120].ljust(120))
            self._stream.flush()
            await asyncio.sleep(_REDRAW_SECONDS)

    def _clear(self) -> None:
        if self._tty:
            self._stream.write("\r" + " " * 120 + "\r")
            self._stream.flush()

    def _prefix(self) -> str:
        return f"{self.scenario}: " if self.scenario else ""
