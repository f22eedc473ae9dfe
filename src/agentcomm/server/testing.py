"""A real hub on free ports inside the current event loop, for tests and benchmarks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from agentcomm.bus.base import Bus
from agentcomm.bus.memory import InMemoryBus
from agentcomm.config import Settings
from agentcomm.core.clock import Clock
from agentcomm.server.lifecycle.hub import Hub
from agentcomm.server.lifecycle.running import RunningServer


@dataclass
class HubEndpoints:
    settings: Settings
    bus: Bus
    hub: Hub
    server: RunningServer

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.server.http_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.server.http_port}/ws"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.server.grpc_port}"


def test_settings(**overrides: Any) -> Settings:
    """Settings for a hub on free loopback ports (the environment still applies)."""
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "grpc_host": "127.0.0.1",
        "grpc_port": 0,
        "message_bus": "memory",
        "shutdown_timeout": 5.0,
        # Tests that look at history name a database of their own.
        "history_url": "none",
    }
    values.update(overrides)
    return Settings(**values)


@asynccontextmanager
async def running_hub(
    settings: Settings | None = None, bus: Bus | None = None, *, clock: Clock | None = None
) -> AsyncIterator[HubEndpoints]:
    """Starts a hub (HTTP, WebSocket, gRPC, bus consumers) and stops it on exit."""
    settings = settings or test_settings()
    if bus is None:
        if settings.message_bus == "memory":
            bus = InMemoryBus()
        else:
            from agentcomm.bus.factory import create_bus

            bus = create_bus(settings)
    server = RunningServer(settings, bus, clock=clock)
    await server.start()
    try:
        yield HubEndpoints(settings=settings, bus=bus, hub=server.hub, server=server)
    finally:
        await server.stop()


test_settings.__test__ = False  # type: ignore[attr-defined]  # not a pytest test
