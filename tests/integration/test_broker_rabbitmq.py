"""The reference broker on RabbitMQ, each party on its own connection as separate processes are.

Each test runs in a fresh vhost (the `rabbitmq_env` fixture).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest

from agentcomm.broker.presence import AgentTable
from agentcomm.broker.service import ReferenceBroker
from agentcomm.bus.base import Delivery
from agentcomm.bus.factory import create_bus
from agentcomm.config import Settings
from agentcomm.protocol.codec import encode_for_bus
from agentcomm.protocol.models import Envelope
from agentcomm.protocol.queues import BROKER_INPUT_QUEUE
from agentcomm.protocol.vocabulary import MessageType
from agentcomm.server.testing import HubEndpoints, running_hub, test_settings
from tests.conftest import free_port
from tests.integration.test_broker_hub import WAIT, BusAgent, Frontend, agent_online

pytestmark = pytest.mark.rabbitmq

# A restarted server is found again within the broker's reconnect backoff (at most 10 s).
RECONNECT_WAIT = 30.0


@asynccontextmanager
async def own_broker(settings: Settings, grpc_target: str) -> AsyncIterator[ReferenceBroker]:
    bus = create_bus(settings, name="test-broker")
    broker = ReferenceBroker(bus, grpc_target, start_timeout=WAIT)
    try:
        await asyncio.wait_for(broker.start(), WAIT)
        yield broker
    finally:
        await asyncio.wait_for(broker.stop(), WAIT)
        await asyncio.wait_for(bus.close(), WAIT)


@asynccontextmanager
async def own_agent(
    settings: Settings, hub: HubEndpoints, agent_id: str
) -> AsyncIterator[BusAgent]:
    bus = create_bus(settings, name=f"test-agent-{agent_id}")
    agent = BusAgent(hub.grpc_target, bus, agent_id)
    try:
        await asyncio.wait_for(agent.start(), WAIT)
        yield agent
    finally:
        await agent.stop()
        await asyncio.wait_for(bus.close(), WAIT)


@asynccontextmanager
async def own_frontend(hub: HubEndpoints) -> AsyncIterator[Frontend]:
    frontend = await Frontend.connect(hub.ws_url)
    try:
        yield frontend
    finally:
        await frontend.close()


@pytest.fixture
def settings(rabbitmq_env: dict[str, str]) -> Settings:
    return test_settings(**rabbitmq_env)


async def chat_turn(frontend: Frontend, agent: BusAgent, message_id: str) -> None:
    await frontend.send(message_type="TEXT", message_id=message_id, text_payload="ping")
    work = await agent.next_message()
    assert work.message_id == message_id
    await agent.reply_to(work, f"pong {message_id}")
    reply = await frontend.expect_reply(message_id)
    assert reply["text_payload"] == f"pong {message_id}"


async def test_chat_turn_through_a_broker_on_its_own_connection(settings: Settings) -> None:
    async with AsyncExitStack() as stack:
        hub = await stack.enter_async_context(running_hub(settings))
        broker = await stack.enter_async_context(own_broker(settings, hub.grpc_target))
        agent = await stack.enter_async_context(own_agent(settings, hub, "helper"))
        await asyncio.wait_for(broker.wait_for_presence(agent_online("helper")), WAIT)
        frontend = await stack.enter_async_context(own_frontend(hub))
        await chat_turn(frontend, agent, "t-1")
        # The reply can reach the frontend a moment before the broker's handler returns;
        # stopping waits for it.
        await asyncio.wait_for(broker.stop(), WAIT)
        assert broker.stats.routed == 2


async def test_competing_brokers_share_the_input_queue(settings: Settings) -> None:
    turns = 12
    async with AsyncExitStack() as stack:
        hub = await stack.enter_async_context(running_hub(settings))
        first = await stack.enter_async_context(own_broker(settings, hub.grpc_target))
        second = await stack.enter_async_context(own_broker(settings, hub.grpc_target))
        agent = await stack.enter_async_context(own_agent(settings, hub, "helper"))
        for broker in (first, second):
            await asyncio.wait_for(broker.wait_for_presence(agent_online("helper")), WAIT)
        frontend = await stack.enter_async_context(own_frontend(hub))

        for index in range(turns):
            await frontend.send(message_type="TEXT", message_id=f"t-{index}", text_payload="hi")
        for _ in range(turns):
            work = await agent.next_message()
            await agent.reply_to(work, "done")
        for index in range(turns):
            await frontend.expect_reply(f"t-{index}")

        for broker in (first, second):
            await asyncio.wait_for(broker.stop(), WAIT)
        # Every TEXT and every REPLY was routed exactly once, by one broker or the other.
        assert first.stats.routed + second.stats.routed == 2 * turns
        assert first.stats.routed > 0
        assert second.stats.routed > 0


async def test_broker_outlives_a_server_restart(rabbitmq_env: dict[str, str]) -> None:
    settings = test_settings(**rabbitmq_env, grpc_port=free_port())
    target = f"127.0.0.1:{settings.grpc_port}"
    async with AsyncExitStack() as stack:
        broker_bus = create_bus(settings, name="test-broker")
        stack.push_async_callback(broker_bus.close)
        broker = ReferenceBroker(broker_bus, target, start_timeout=WAIT)
        stack.push_async_callback(broker.stop)

        async with running_hub(settings) as first_hub:
            await asyncio.wait_for(broker.start(), WAIT)
            async with own_agent(settings, first_hub, "old"):
                await asyncio.wait_for(broker.wait_for_presence(agent_online("old")), WAIT)

        # The server is gone: the broker keeps what it knew, marked stale, and routes with it.
        await asyncio.wait_for(broker.wait_for_presence(_stale), WAIT)
        assert "old" in broker.table.agents
        orphan = Envelope(
            message_type=MessageType.TEXT,
            message_id="t-while-down",
            sender_id="web_0123456789abcdef",
            receiver_id="old",
            text_payload="anyone?",
        )
        await asyncio.wait_for(
            broker.handle(
                Delivery(BROKER_INPUT_QUEUE, encode_for_bus(orphan), orphan.message_id, False)
            ),
            WAIT,
        )
        assert broker.router.ledger.agent_for_message("t-while-down") == "old"

        async with running_hub(settings) as second_hub:
            await asyncio.wait_for(broker.wait_for_presence(_fresh), RECONNECT_WAIT)
            assert second_hub.hub.brokers.get(broker.broker_id) is not None
            async with (
                own_agent(settings, second_hub, "new") as new,
                own_frontend(second_hub) as frontend,
            ):
                await asyncio.wait_for(broker.wait_for_presence(agent_online("new")), WAIT)
                await chat_turn(frontend, new, "t-after")


def _stale(table: AgentTable) -> bool:
    return table.stale


def _fresh(table: AgentTable) -> bool:
    return not table.stale
