"""The hub with the described system's clients around it: its broker (`seed_broker.py`) and its
frontend flow (`seed_frontend.py`), with our SDK agents answering, on both buses.

A test asks for `open_stack` parametrised (indirectly) with the flavours it runs on: the bus,
and how the agents get their work (`grpc`: over the server's stream; `amqp`: straight from
the bus, as `agentcomm agent` does on RabbitMQ by default). Under CI (CI=true) a missing
RabbitMQ is a failure, never a skip (`rabbitmq_env`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import pytest

from agentcomm.bus.base import Bus
from agentcomm.config import Settings
from agentcomm.sdk import Agent
from agentcomm.sdk.demo_agents import build_demo_agent
from agentcomm.server.testing import HubEndpoints, running_hub, test_settings
from tests.compat.seed_broker import SeedBroker
from tests.compat.seed_frontend import SeedFrontend
from tests.support.bus import side_bus

WAIT = 15.0
T = TypeVar("T")


async def within(awaitable: Awaitable[T], timeout: float = WAIT) -> T:
    async with asyncio.timeout(timeout):
        return await awaitable


@dataclass(frozen=True)
class Flavour:
    bus: str  # "memory" | "rabbitmq"
    transport: str  # "grpc" | "amqp"


def _flavour(bus: str, transport: str) -> Any:
    marks = [pytest.mark.rabbitmq] if bus == "rabbitmq" else []
    return pytest.param(Flavour(bus, transport), id=f"{bus}-{transport}", marks=marks)


# Both buses, each with both ways for agents to get their work.
EVERY_FLAVOUR = [
    _flavour("memory", "grpc"),
    _flavour("memory", "amqp"),
    _flavour("rabbitmq", "amqp"),
    _flavour("rabbitmq", "grpc"),
]
# Both buses, agents as `agentcomm agent` starts them there.
BOTH_BUSES = [_flavour("memory", "grpc"), _flavour("rabbitmq", "amqp")]


@dataclass
class SeedStack:
    hub: HubEndpoints
    bus: Bus  # the bus as another process sees it (the hub's own one when in-process)
    broker: SeedBroker
    flavour: Flavour
    exits: AsyncExitStack

    def agent_settings(self) -> Settings:
        return self.hub.settings.model_copy(
            update={"grpc_host": "127.0.0.1", "grpc_port": self.hub.server.grpc_port}
        )

    def new_agent(self, name: str) -> Agent:
        """An SDK agent of this flavour, not started (give it a handler)."""
        return Agent(name, settings=self.agent_settings(), **self._transport())

    async def start(self, agent: Agent) -> Agent:
        """Starts `agent` (stopped when the test ends) and waits until the broker knows it."""
        await within(agent.start())
        self.exits.push_async_callback(lambda: within(agent.stop()))
        assert agent.id is not None
        await self.broker.knows(agent.id)
        return agent

    async def demo_agent(self, kind: str) -> Agent:
        return await self.start(build_demo_agent(kind, self.agent_settings(), **self._transport()))

    def _transport(self) -> dict[str, Any]:
        shared = self.flavour.bus == "memory" and self.flavour.transport == "amqp"
        return {"transport": self.flavour.transport, "bus": self.hub.bus if shared else None}

    async def frontend(self, *, capabilities: dict[str, Any] | None = None) -> SeedFrontend:
        frontend = await SeedFrontend.connect(self.hub.ws_url, capabilities=capabilities)
        self.exits.push_async_callback(frontend.close)
        return frontend

    async def metrics(self) -> str:
        async with httpx.AsyncClient(timeout=WAIT) as client:
            response = await client.get(f"{self.hub.http_url}/metrics")
        response.raise_for_status()
        return response.text


OpenStack = Callable[..., Awaitable[SeedStack]]


@pytest.fixture
def flavour_env(request: pytest.FixtureRequest) -> tuple[Flavour, dict[str, str]]:
    flavour: Flavour = request.param
    env = request.getfixturevalue("rabbitmq_env") if flavour.bus == "rabbitmq" else {}
    return flavour, env


@pytest.fixture
async def open_stack(flavour_env: tuple[Flavour, dict[str, str]]) -> AsyncIterator[OpenStack]:
    """`await open_stack(**settings)`: a hub with these settings and the seed broker beside it;
    everything opened is closed when the test ends, agents first."""
    flavour, env = flavour_env
    async with AsyncExitStack() as exits:

        async def open_(**overrides: Any) -> SeedStack:
            settings = test_settings(**{**env, **overrides})
            hub = await within(exits.enter_async_context(running_hub(settings)))
            bus = await within(exits.enter_async_context(side_bus(settings, hub.bus)))
            broker = await within(SeedBroker(bus, hub.grpc_target).start())
            exits.push_async_callback(lambda: within(broker.stop()))
            return SeedStack(hub, bus, broker, flavour, exits)

        yield open_
