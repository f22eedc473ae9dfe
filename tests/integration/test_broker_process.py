"""`agentcomm broker` as its own process: routes a chat turn, stops cleanly on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest

from agentcomm.bus.factory import create_bus
from agentcomm.config import Settings
from agentcomm.server.testing import HubEndpoints, running_hub, test_settings
from tests.conftest import free_port
from tests.integration.test_broker_hub import WAIT, BusAgent, Frontend

pytestmark = pytest.mark.rabbitmq

READY_LINE = b"routing from broker_input_queue"


@asynccontextmanager
async def broker_process(
    settings: Settings, *extra: str
) -> AsyncIterator[asyncio.subprocess.Process]:
    env = os.environ | {
        "MESSAGE_BUS": "rabbitmq",
        "RABBITMQ_HOST": settings.rabbitmq_host,
        "RABBITMQ_PORT": str(settings.rabbitmq_port),
        "RABBITMQ_VHOST": settings.rabbitmq_vhost,
        "GRPC_HOST": "127.0.0.1",
        "GRPC_PORT": str(settings.grpc_port),
        "LOG_LEVEL": "INFO",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agentcomm",
        "broker",
        *extra,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await asyncio.wait_for(process.wait(), WAIT)


async def wait_for_line(process: asyncio.subprocess.Process, needle: bytes) -> bytes:
    assert process.stderr is not None
    async with asyncio.timeout(WAIT):
        while True:
            line = await process.stderr.readline()
            if not line:
                raise AssertionError(f"the broker exited before logging {needle!r}")
            if needle in line:
                return line


async def rest_of_output(process: asyncio.subprocess.Process) -> bytes:
    assert process.stderr is not None
    return await asyncio.wait_for(process.stderr.read(), WAIT)


@asynccontextmanager
async def registered_agent(settings: Settings, hub: HubEndpoints) -> AsyncIterator[BusAgent]:
    bus = create_bus(settings, name="test-agent")
    agent = BusAgent(hub.grpc_target, bus, "helper")
    try:
        await asyncio.wait_for(agent.start(), WAIT)
        yield agent
    finally:
        await agent.stop()
        await asyncio.wait_for(bus.close(), WAIT)


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
async def test_broker_process_routes_and_stops_on_signal(
    rabbitmq_env: dict[str, str], stop_signal: signal.Signals
) -> None:
    settings = test_settings(**rabbitmq_env, grpc_port=free_port())
    async with AsyncExitStack() as stack:
        hub = await stack.enter_async_context(running_hub(settings))
        # Registered before the broker starts, so its first agent list has the agent in it.
        agent = await stack.enter_async_context(registered_agent(settings, hub))
        process = await stack.enter_async_context(
            broker_process(settings, "--broker-id", "broker_proc", "--broker-name", "proc")
        )
        await wait_for_line(process, READY_LINE)
        record = hub.hub.brokers.get("broker_proc")
        assert record is not None
        assert record.broker_name == "proc"

        frontend = await Frontend.connect(hub.ws_url)
        stack.push_async_callback(frontend.close)
        await frontend.send(message_type="TEXT", message_id="t-proc", text_payload="ping")
        work = await agent.next_message()
        await agent.reply_to(work, "pong")
        assert (await frontend.expect_reply("t-proc"))["text_payload"] == "pong"

        process.send_signal(stop_signal)
        assert await asyncio.wait_for(process.wait(), WAIT) == 0
        assert b"Traceback" not in await rest_of_output(process)


async def test_broker_process_without_a_server_exits_with_an_error(
    rabbitmq_env: dict[str, str],
) -> None:
    settings = test_settings(**rabbitmq_env, grpc_port=free_port())
    async with broker_process(settings) as process:
        code = await asyncio.wait_for(process.wait(), 3 * WAIT)
        output = await rest_of_output(process)
    assert code == 1
    assert b"Cannot register with the server" in output
    assert b"Traceback" not in output
