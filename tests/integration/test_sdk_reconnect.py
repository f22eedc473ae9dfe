"""SDK agents outlive the server and the bus: they reconnect and register again by themselves."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import pytest

from agentcomm.sdk.demo_agents import build_demo_agent
from agentcomm.server.testing import test_settings
from tests.conftest import free_port
from tests.integration.test_sdk_agents import WAIT, chat, stack
from tests.support.frontend import Frontend

T = TypeVar("T")


async def within(awaitable: Awaitable[T], timeout: float = WAIT) -> T:
    async with asyncio.timeout(timeout):
        return await awaitable


@pytest.mark.parametrize(
    "bus_kind", ["memory", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)]
)
async def test_the_agent_registers_again_after_the_server_restarts(
    bus_kind: str, request: pytest.FixtureRequest
) -> None:
    overrides = request.getfixturevalue("rabbitmq_env") if bus_kind == "rabbitmq" else {}
    # Fixed ports, so that the restarted server is where the agent left the old one.
    settings = test_settings(port=free_port(), grpc_port=free_port(), **overrides)
    # On the in-process bus the agent takes work over gRPC; on RabbitMQ from its own queue,
    # which outlives the server.
    agent = build_demo_agent("echo", settings.model_copy(update={"grpc_host": "127.0.0.1"}))
    try:
        async with stack(settings) as first:
            await within(agent.start())
            await first.ready(agent)
            async with await Frontend.registered(first.hub.ws_url) as alice:
                assert (await chat(alice, "before", "m-1"))["text_payload"] == "echo: before"
        async with stack(settings) as second:
            await second.ready(agent)
            async with await Frontend.registered(second.hub.ws_url) as bob:
                assert (await chat(bob, "after", "m-2"))["text_payload"] == "echo: after"
    finally:
        await within(agent.stop())


@pytest.mark.rabbitmq
async def test_the_agent_comes_back_after_rabbitmq_dropped_its_connection(
    rabbitmq_env: dict[str, str], rabbitmq_vhost: str
) -> None:
    async with stack(test_settings(**rabbitmq_env)) as running:
        agent = build_demo_agent("echo", running.agent_settings())
        async with running.chatting(agent) as alice:
            assert (await chat(alice, "before", "m-1"))["text_payload"] == "echo: before"
            process = await asyncio.create_subprocess_exec(
                "rabbitmqctl",
                "-q",
                "close_all_connections",
                "--vhost",
                rabbitmq_vhost,
                "test: the bus goes away",
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            assert await within(process.wait(), 60) == 0
            # Everyone on the vhost reconnects by themselves; then the chat works again.
            reply = await chat(alice, "after", "m-2")
    assert reply["text_payload"] == "echo: after", reply
