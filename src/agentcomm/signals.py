"""Stop signals, handled the same way by every agentcomm process: `serve`, `broker`, an agent
built on the SDK, and `dev`.

The first SIGINT or SIGTERM asks for a graceful stop; a second one, while that stop runs, ends
the process at once (exit code 130), so that a stop that hangs can always be cut short.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable, Iterator

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# The shell's code for "ended by Ctrl+C".
FORCED_EXIT_CODE = 130


@contextlib.contextmanager
def stop_on_signals(on_stop: Callable[[], None]) -> Iterator[bool]:
    """While inside, the first stop signal calls `on_stop` and a second one exits the process.

    Yields whether the handlers are installed: they are not outside the main thread (an agent
    run by a host program), where the host owns the signals.
    """
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    received: list[signal.Signals] = []

    def on_signal(signum: signal.Signals) -> None:
        if received:
            log.warning("Second %s: exiting without waiting", signum.name)
            os._exit(FORCED_EXIT_CODE)
        received.append(signum)
        log.info("%s received: shutting down (again to force)", signum.name)
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
