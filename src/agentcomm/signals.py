"""Stop signals, handled the same way by every agentcomm process: `serve`, `broker`, an agent
built on the SDK, and `dev`.

The first SIGINT or SIGTERM asks for a graceful stop and says, in one line, what the stop waits
for and for how long; a second one, while that stop runs, ends the process at once (exit code
130), so that a stop that hangs can always be cut short:

    SIGINT received: stopping, waiting up to 10 s for 1 reply in progress — Ctrl+C again to
    stop now
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable, Iterator
from typing import NamedTuple

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# The shell's code for "ended by Ctrl+C".
FORCED_EXIT_CODE = 130


class Waiting(NamedTuple):
    """What a graceful stop waits for ("1 reply in progress"), and for at most how long."""

    seconds: float
    what: str


def counted(count: int, one: str, many: str) -> str:
    """`1 reply in progress`, `2 replies in progress`."""
    return f"{count} {one if count == 1 else many}"


def stopping_line(signum: signal.Signals, waiting: Waiting | None) -> str:
    """The line the first stop signal logs."""
    again = "Ctrl+C" if signum is signal.SIGINT else signum.name
    waits = f", waiting up to {waiting.seconds:g} s for {waiting.what}" if waiting else ""
    return f"{signum.name} received: stopping{waits} — {again} again to stop now"


@contextlib.contextmanager
def stop_on_signals(
    on_stop: Callable[[], None], waiting: Callable[[], Waiting | None] | None = None
) -> Iterator[bool]:
    """While inside, the first stop signal calls `on_stop` and a second one exits the process.

    `waiting`, asked at the first signal, says what the stop will wait for (None: nothing
    worth naming). Yields whether the handlers are installed: they are not outside the main
    thread (an agent run by a host program), where the host owns the signals.
    """
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    received: list[signal.Signals] = []

    def on_signal(signum: signal.Signals) -> None:
        if received:
            log.warning("Second %s: exiting without waiting", signum.name)
            os._exit(FORCED_EXIT_CODE)
        received.append(signum)
        log.info(stopping_line(signum, waiting() if waiting is not None else None))
        on_stop()

    for signum in STOP_SIGNALS:
        try:
            loop.add_signal_handler(signum, on_signal, signum)
        except (NotImplementedError, RuntimeError, ValueError):
            break  # not the main thread, or a platform without signal handlers in the loop
        installed.append(signum)
    try:
        yield bool(installed)
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)


async def wait_for_stop_signal() -> None:
    """Returns on the first SIGINT/SIGTERM; a second one, after this returned, still ends the
    process at once as long as the caller's stop runs inside `stop_on_signals`."""
    stop = asyncio.Event()
    with stop_on_signals(stop.set):
        await stop.wait()
