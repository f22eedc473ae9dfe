"""`agentcomm broker`: one reference broker as its own process, until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import logging

from agentcomm.broker.service import BrokerStartError, ReferenceBroker
from agentcomm.bus.base import BusError
from agentcomm.config import Settings
from agentcomm.core.auth import token_subject
from agentcomm.grpc_channel import ClientTls
from agentcomm.signals import Waiting, stop_on_signals

log = logging.getLogger(__name__)


async def run_broker(settings: Settings, broker_id: str | None, broker_name: str) -> int:
    """Runs a broker against the configured bus and server; returns the exit code."""
    from agentcomm.bus.factory import create_bus

    if settings.message_bus == "memory":
        log.warning(
            "MESSAGE_BUS=memory: the in-process bus is private to this process, so this broker "
            "will see no messages from a server in another process (use `agentcomm dev`)"
        )
    bus = create_bus(settings)
    broker = ReferenceBroker(
        bus,
        f"{_dialable(settings.grpc_host)}:{settings.grpc_port}",
        # With a token, the broker is who its token says it is.
        broker_id=broker_id or token_subject(settings.auth_token),
        broker_name=broker_name,
        prefetch=settings.rabbitmq_prefetch,
        concurrency=min(settings.rabbitmq_prefetch, settings.consumer_concurrency),
        stop_timeout=settings.shutdown_timeout,
        returning_grace=settings.agent_timeout,
        token=settings.auth_token,
        tls=ClientTls.from_settings(settings),
    )
    stopping = asyncio.Event()
    # The stop runs inside too: a second signal while it waits ends the process at once.
    with stop_on_signals(
        stopping.set, lambda: Waiting(settings.shutdown_timeout, "the messages being routed")
    ):
        try:
            if not await _start_unless_stopped(broker, stopping):
                return 1
            await stopping.wait()
        finally:
            await broker.stop()
            await bus.close()
    return 0


def _dialable(host: str) -> str:
    # GRPC_HOST is also the server's listen address; a wildcard there means "this machine".
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host


async def _start_unless_stopped(broker: ReferenceBroker, stopping: asyncio.Event) -> bool:
    """Starts the broker; a signal during a slow start (server not up yet) cancels it."""
    start = asyncio.create_task(broker.start(), name="broker-start")
    stop_wait = asyncio.create_task(stopping.wait(), name="broker-stop-wait")
    try:
        await asyncio.wait({start, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop_wait.cancel()
        if not start.done():
            start.cancel()
        # Outcomes are read from the tasks below; gathering only waits for both to settle.
        await asyncio.gather(start, stop_wait, return_exceptions=True)
    return _started(start)


def _started(start: asyncio.Task[None]) -> bool:
    if start.cancelled():
        return False
    exc = start.exception()
    if exc is None:
        return True
    if isinstance(exc, BrokerStartError | BusError):
        log.error("Broker could not start: %s", exc)
        return False
    raise exc
