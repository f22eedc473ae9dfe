"""`agentcomm agent echo|typist` as its own process: it answers, and SIGTERM/SIGINT stop it
cleanly (unregistered, exit code 0)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest

from agentcomm.server.testing import test_settings
from tests.integration.test_sdk_agents import WAIT, Stack, chat, stack, within
from tests.support.frontend import Frontend
from tests.support.waiting import wait_until


@pytest.fixture
async def memory_stack() -> AsyncIterator[Stack]:
    async with stack(test_settings()) as running:
        yield running


@asynccontextmanager
async def agent_process(
    running: Stack, kind: str, *args: str
) -> AsyncIterator[asyncio.subprocess.Process]:
    env = {**os.environ, "MESSAGE_BUS": "memory", "LOG_LEVEL": "WARNING"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agentcomm",
        "agent",
        kind,
        "--grpc-host",
        "127.0.0.1",
        "--grpc-port",
        str(running.hub.server.grpc_port),
        *args,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await within(process.wait())


async def online(running: Stack, agent_id: str) -> None:
    await running.broker_sees(agent_id)
    await wait_until(
        lambda: running.hub.hub.commands.has_stream(agent_id),
        timeout=WAIT,
        what=f"the command stream of {agent_id}",
    )


async def agents_online(running: Stack) -> dict[str, bool]:
    async with httpx.AsyncClient(base_url=running.hub.http_url, timeout=WAIT) as http:
        return {a["agent_id"]: a["is_online"] for a in (await http.get("/api/agents")).json()}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_the_echo_process_answers_and_stops_cleanly_on_a_signal(
    memory_stack: Stack, signum: signal.Signals
) -> None:
    async with agent_process(memory_stack, "echo", "--name", "Echo One", "--id", "echo-1") as proc:
        await online(memory_stack, "echo-1")
        async with await Frontend.registered(memory_stack.hub.ws_url) as alice:
            reply = await chat(alice, "from afar", "m-1", receiver_id="echo-1")
        assert reply["text_payload"] == "echo: from afar"
        proc.send_signal(signum)
        assert await within(proc.wait()) == 0
        assert proc.stderr is not None
        errors = (await within(proc.stderr.read())).decode()
    assert "Traceback" not in errors, errors
    assert (await agents_online(memory_stack))["echo-1"] is False  # unregistered


async def test_the_typist_process_streams(memory_stack: Stack) -> None:
    async with agent_process(memory_stack, "typist") as proc:
        await online(memory_stack, "typist")
        async with await Frontend.registered(
            memory_stack.hub.ws_url, capabilities={"stream": True}
        ) as alice:
            reply = await chat(alice, "far away", "m-1")
            chunks = [f for f in alice.take_buffered() if f.get("message_type") == "REPLY_CHUNK"]
        proc.send_signal(signal.SIGTERM)
        assert await within(proc.wait()) == 0
    assert reply["message_type"] == "REPLY"
    assert "".join(c["text_delta"] for c in chunks) == reply["text_payload"]


async def test_a_bad_transport_choice_exits_with_a_clear_message(memory_stack: Stack) -> None:
    async with agent_process(memory_stack, "echo", "--transport", "amqp") as proc:
        assert await within(proc.wait()) == 2
        assert proc.stderr is not None
        errors = (await within(proc.stderr.read())).decode()
    assert "shared in-process bus" in errors
