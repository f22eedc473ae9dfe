"""`agentcomm serve`: run the hub until SIGINT/SIGTERM, then shut down gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from agentcomm.bus.base import BusError
from agentcomm.bus.factory import create_bus
from agentcomm.config import Settings
from agentcomm.core.auth import WeakSecret
from agentcomm.server.collector import tune_collector_for_serving
from agentcomm.server.lifecycle.running import RunningServer
from agentcomm.signals import Waiting, counted, stop_on_signals

log = logging.getLogger(__name__)

# Seconds of SHUTDOWN_TIMEOUT kept for closing connections after a stop that ran out of time.
_LETTING_GO = 2.5


async def serve(settings: Settings) -> int:
    try:
        running = RunningServer(settings, create_bus(settings))
    except WeakSecret as exc:
        log.error("Cannot start: %s", exc)
        return 2
    try:
        # The ports first: a taken one stops the start here, before the bus is connected.
        await running.start()
    except (BusError, OSError) as exc:
        log.error("Cannot start: %s", exc)
        return 1
    tune_collector_for_serving()
    stop_requested = asyncio.Event()
    # Before anyone is told the server is up: a SIGTERM from then on is a graceful stop, and a
    # second one during that stop ends the process at once.
    with stop_on_signals(stop_requested.set, lambda: _waiting(settings, running)):
        return await _serve_until_stopped(settings, running, stop_requested)


def _waiting(settings: Settings, running: RunningServer) -> Waiting | None:
    """What the stop waits for: frontends to be told (1001) and agents' streams to end, within
    SHUTDOWN_TIMEOUT; agents in other processes finish their replies on their own."""
    sockets = len(running.hub.state.connections)
    agents = running.hub.registry.online_count()
    told = [
        counted(count, one, many)
        for count, one, many in ((sockets, "frontend", "frontends"), (agents, "agent", "agents"))
        if count
    ]
    if not told:
        return None
    return Waiting(
        settings.shutdown_timeout, f"{' and '.join(told)} to be told the hub is going away"
    )


async def _serve_until_stopped(
    settings: Settings, running: RunningServer, stop_requested: asyncio.Event
) -> int:
    print(
        f"agentcomm serving on http://{_display(settings.host)}:{running.http_port} "
        f"(WebSocket /ws), gRPC on {settings.grpc_host}:{running.grpc_port}, "
        f"bus: {settings.message_bus}",
        flush=True,
    )
    stop = asyncio.create_task(stop_requested.wait())
    closed = asyncio.create_task(running.wait_closed())
    await asyncio.wait({stop, closed}, return_when=asyncio.FIRST_COMPLETED)
    for task in (stop, closed):
        task.cancel()
    try:
        # Each step of the stop has its own timeout, but they add up (and every call to a
        # RabbitMQ that stopped answering waits for its own): SHUTDOWN_TIMEOUT bounds the whole,
        # keeping a moment of it for what an interrupted stop still closes on its way out.
        budget = max(settings.shutdown_timeout / 2, settings.shutdown_timeout - _LETTING_GO)
        async with asyncio.timeout(budget):
            await running.stop()
    except TimeoutError:
        log.warning(
            "The graceful stop took longer than SHUTDOWN_TIMEOUT (%g s); exiting now (what was "
            "not acknowledged goes back to the bus)",
            settings.shutdown_timeout,
        )
        # The bus's connection must be let go all the same, or it keeps reconnecting and
        # the process never ends.
        with contextlib.suppress(TimeoutError, BusError):
            async with asyncio.timeout(_LETTING_GO):
                await running.hub.bus.close()
    return 0


def _display(host: str) -> str:
    return "localhost" if host in ("0.0.0.0", "::", "") else host
