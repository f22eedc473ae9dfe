"""A hub with the reference broker and SDK agents, called over A2A with a2a-sdk's own client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import TypeVar

import httpx
from a2a.client import Client, ClientConfig, ClientFactory
from a2a.client.card_resolver import A2ACardResolver
from a2a.types import AgentCard, Message, Part, Role, SendMessageRequest, StreamResponse

from agentcomm.broker.service import ReferenceBroker
from agentcomm.config import Settings
from agentcomm.core.auth import token_subject
from agentcomm.protocol.ids import new_message_id
from agentcomm.sdk import Agent
from agentcomm.server.testing import HubEndpoints, running_hub
from tests.support.bus import side_bus
from tests.support.waiting import wait_until

WAIT = 15.0
T = TypeVar("T")


async def within(awaitable: Awaitable[T], timeout: float = WAIT) -> T:
    async with asyncio.timeout(timeout):
        return await awaitable


@dataclass
class A2AStack:
    hub: HubEndpoints
    broker: ReferenceBroker
    exits: AsyncExitStack
    http: httpx.AsyncClient = field(default_factory=lambda: httpx.AsyncClient(timeout=WAIT))

    @property
    def agent_settings(self) -> Settings:
        return self.hub.settings.model_copy(
            update={"grpc_host": "127.0.0.1", "grpc_port": self.hub.server.grpc_port}
        )

    def url(self, agent_id: str = "") -> str:
        return f"{self.hub.http_url}/a2a" + (f"/{agent_id}" if agent_id else "")

    async def run(self, agent: Agent) -> Agent:
        """Starts the agent (stopped with the stack) and waits until the broker routes to it."""
        await within(agent.start())
        self.exits.push_async_callback(lambda: within(agent.stop()))
        agent_id = agent.id
        assert agent_id is not None

        def routable() -> bool:
            info = self.broker.table.agents.get(agent_id)
            return info is not None and info.is_online

        await wait_until(routable, timeout=WAIT, what=f"the broker to see {agent_id}")
        return agent

    async def card(self, agent_id: str) -> AgentCard:
        return await A2ACardResolver(self.http, self.url(agent_id)).get_agent_card()

    async def client(
        self, agent_id: str, *, version: str = "1.0", streaming: bool = True, url: str = ""
    ) -> Client:
        """a2a-sdk's client for the agent, speaking spec `version` (1.0 or 0.3); with `url`,
        the agent's card but sent to that address."""
        card = await self.card(agent_id)
        chosen = [i for i in card.supported_interfaces if i.protocol_version == version]
        for interface in chosen:
            interface.url = url or interface.url
        assert chosen, f"the card offers no {version} interface: {card.supported_interfaces}"
        del card.supported_interfaces[:]
        card.supported_interfaces.extend(chosen)
        config = ClientConfig(httpx_client=self.http, streaming=streaming)
        return ClientFactory(config).create(card)


def text_message(text: str, context_id: str = "") -> SendMessageRequest:
    return SendMessageRequest(
        message=Message(
            message_id=new_message_id(),
            role=Role.ROLE_USER,
            context_id=context_id,
            parts=[Part(text=text)],
        )
    )


async def collect(stream: AsyncIterator[StreamResponse]) -> list[StreamResponse]:
    async with asyncio.timeout(WAIT):
        return [event async for event in stream]


@asynccontextmanager
async def a2a_stack(settings: Settings) -> AsyncIterator[A2AStack]:
    async with AsyncExitStack() as exits:
        hub = await exits.enter_async_context(running_hub(settings))
        bus = await exits.enter_async_context(side_bus(settings, hub.bus))
        broker = ReferenceBroker(
            bus,
            hub.grpc_target,
            broker_id=token_subject(settings.auth_token),
            broker_name="a2a-test-broker",
            token=settings.auth_token,
        )
        await within(broker.start())
        exits.push_async_callback(lambda: within(broker.stop()))
        stack = A2AStack(hub, broker, exits)
        exits.push_async_callback(stack.http.aclose)
        yield stack
