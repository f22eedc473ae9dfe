"""SDK agents against a real hub and the reference broker.

The test plays the frontend over the WebSocket; the hub, the broker and the agents are the real
ones. Agents receive work over the gRPC stream (in-process bus) or straight from the bus
(shared in-process bus, or RabbitMQ in a fresh vhost).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import pytest

from agentcomm.broker.service import ReferenceBroker
from agentcomm.bus.base import Bus
from agentcomm.config import Settings
from agentcomm.protocol.vocabulary import AgentState
from agentcomm.sdk import Agent, Message, RegistrationRefused
from agentcomm.sdk.demo_agents import build_demo_agent
from agentcomm.server.testing import HubEndpoints, running_hub, test_settings
from tests.support.bus import side_bus
from tests.support.frontend import Frontend, of_type
from tests.support.waiting import wait_until

WAIT = 10.0
T = TypeVar("T")


async def within(awaitable: Awaitable[T], timeout: float = WAIT) -> T:
    async with asyncio.timeout(timeout):
        return await awaitable


@dataclass
class Stack:
    hub: HubEndpoints
    bus: Bus  # the bus as another process sees it (the hub's own one when in-process)
    broker: ReferenceBroker

    def agent_settings(self) -> Settings:
        return self.hub.settings.model_copy(
            update={"grpc_host": "127.0.0.1", "grpc_port": self.hub.server.grpc_port}
        )

    async def broker_sees(self, agent_id: str, state: AgentState = AgentState.ONLINE) -> None:
        def seen() -> bool:
            info = self.broker.table.agents.get(agent_id)
            return info is not None and info.is_online and info.status is state

        await wait_until(seen, timeout=WAIT, what=f"the broker to see {agent_id} {state}")

    async def ready(self, agent: Agent) -> None:
        """Waits until the broker routes to the agent and the server can send it commands
        (start() returns once registered; the command stream opens a moment later)."""
        agent_id = agent.id
        assert agent_id is not None
        await self.broker_sees(agent_id)
        await wait_until(
            lambda: self.hub.hub.commands.has_stream(agent_id),
            timeout=WAIT,
            what=f"the command stream of {agent_id}",
        )

    @asynccontextmanager
    async def running(self, agent: Agent) -> AsyncIterator[Agent]:
        await within(agent.start())
        try:
            await self.ready(agent)
            yield agent
        finally:
            await within(agent.stop())

    @asynccontextmanager
    async def chatting(self, agent: Agent, *, stream: bool = False) -> AsyncIterator[Frontend]:
        """The agent running, and a registered frontend to talk to it."""
        capabilities = {"stream": True} if stream else None
        async with (
            self.running(agent),
            await Frontend.registered(self.hub.ws_url, capabilities=capabilities) as frontend,
        ):
            yield frontend


@asynccontextmanager
async def stack(settings: Settings) -> AsyncIterator[Stack]:
    async with AsyncExitStack() as exits:
        hub = await exits.enter_async_context(running_hub(settings))
        bus = await exits.enter_async_context(side_bus(settings, hub.bus))
        broker = ReferenceBroker(bus, hub.grpc_target, broker_name="sdk-test-broker")
        await within(broker.start())
        exits.push_async_callback(lambda: within(broker.stop()))
        yield Stack(hub, bus, broker)


@pytest.fixture
async def memory_stack() -> AsyncIterator[Stack]:
    async with stack(test_settings()) as running:
        yield running


async def chat(frontend: Frontend, text: str, message_id: str, **fields: Any) -> dict[str, Any]:
    """Sends a TEXT and returns its final answer (REPLY or ERROR)."""
    await frontend.send_text(text, message_id=message_id, **fields)
    return await frontend.next(
        lambda frame: (
            frame.get("message_type") in ("REPLY", "ERROR")
            and frame.get("in_reply_to_message_id") == message_id
        ),
        timeout=WAIT,
    )


def echo(settings: Settings, **kwargs: Any) -> Agent:
    return build_demo_agent("echo", settings, **kwargs)


async def test_echo_over_the_grpc_stream_on_the_in_process_bus(memory_stack: Stack) -> None:
    agent = echo(memory_stack.agent_settings(), transport="grpc")
    assert agent.transport == "grpc"
    async with memory_stack.chatting(agent) as alice:
        reply = await chat(alice, "hello", "m-1")
    assert reply["message_type"] == "REPLY", reply
    assert reply["text_payload"] == "echo: hello"
    assert reply["sender_id"] == "echo"
    assert reply["receiver_id"] == alice.frontend_id
    assert not {"_client_id", "_server_id", "_hops"} & reply.keys()


async def test_echo_from_the_shared_in_process_bus(memory_stack: Stack) -> None:
    agent = echo(memory_stack.agent_settings(), bus=memory_stack.hub.bus)
    assert agent.transport == "memory"
    async with memory_stack.chatting(agent) as alice:
        reply = await chat(alice, "shared", "m-1", receiver_id="echo")
    assert reply["text_payload"] == "echo: shared"


@pytest.mark.rabbitmq
async def test_echo_over_rabbitmq(rabbitmq_env: dict[str, str]) -> None:
    async with stack(test_settings(**rabbitmq_env)) as running:
        agent = echo(running.agent_settings())  # its own RabbitMQ connection
        assert agent.transport == "amqp"
        async with running.chatting(agent) as alice:
            first = await chat(alice, "over rabbit", "m-1")
            second = await chat(alice, "again", "m-2")
    assert first["text_payload"] == "echo: over rabbit"
    assert second["text_payload"] == "echo: again"


@pytest.mark.rabbitmq
async def test_grpc_transport_works_on_rabbitmq_too(rabbitmq_env: dict[str, str]) -> None:
    async with stack(test_settings(**rabbitmq_env)) as running:
        agent = echo(running.agent_settings(), transport="grpc")
        async with running.chatting(agent) as alice:
            reply = await chat(alice, "no bus for me", "m-1")
    assert reply["text_payload"] == "echo: no bus for me"


@pytest.mark.parametrize("transport", ["grpc", "amqp"])
async def test_the_typist_streams_word_by_word(memory_stack: Stack, transport: str) -> None:
    bus = memory_stack.hub.bus if transport == "amqp" else None
    typist = build_demo_agent("typist", memory_stack.agent_settings(), bus=bus)
    async with memory_stack.chatting(typist, stream=True) as alice:
        reply = await chat(alice, "stream this please", "m-1")
        chunks = [
            frame for frame in alice.take_buffered() if frame.get("message_type") == "REPLY_CHUNK"
        ]
    assert reply["message_type"] == "REPLY"
    assert [chunk["seq"] for chunk in chunks] == list(range(len(chunks)))
    assert len(chunks) > 5
    assert {chunk["message_id"] for chunk in chunks} == {reply["message_id"]}
    assert "".join(chunk["text_delta"] for chunk in chunks) == reply["text_payload"]
    assert "stream this please" in reply["text_payload"]


async def test_a_frontend_without_streaming_gets_only_the_whole_reply(
    memory_stack: Stack,
) -> None:
    typist = build_demo_agent("typist", memory_stack.agent_settings())
    async with memory_stack.chatting(typist) as alice:
        reply = await chat(alice, "short", "m-1")
        leftovers = alice.take_buffered()
    assert reply["message_type"] == "REPLY"
    assert not [f for f in leftovers if f.get("message_type") == "REPLY_CHUNK"]


@pytest.mark.parametrize("transport", ["grpc", "amqp"])
async def test_cancel_stops_the_typist_mid_stream(memory_stack: Stack, transport: str) -> None:
    bus = memory_stack.hub.bus if transport == "amqp" else None
    typist = build_demo_agent("typist", memory_stack.agent_settings(), bus=bus)
    long_text = " ".join(f"word{i}" for i in range(400))  # about 20 s of typing
    async with memory_stack.chatting(typist, stream=True) as alice:
        await alice.send_text(long_text, message_id="long-1")
        await alice.next(of_type("REPLY_CHUNK", in_reply_to_message_id="long-1"), timeout=WAIT)
        await alice.send({"message_type": "CANCEL", "in_reply_to_message_id": "long-1"})
        final = await alice.next(
            lambda frame: (
                frame.get("message_type") in ("REPLY", "ERROR")
                and frame.get("in_reply_to_message_id") == "long-1"
            ),
            timeout=WAIT,
        )
        # The agent is free again: the next message is answered at once.
        after = await chat(alice, "next", "m-2")
    assert final["message_type"] == "ERROR", final
    assert final["error_code"] == "cancelled"
    assert after["message_type"] == "REPLY"


async def test_a_failing_handler_becomes_an_error_for_the_frontend(memory_stack: Stack) -> None:
    agent = Agent("fragile", settings=memory_stack.agent_settings())
    calls = 0

    @agent.on_message
    async def handle(message: Message) -> str:
        nonlocal calls
        calls += 1
        raise RuntimeError("no luck")

    async with memory_stack.chatting(agent) as alice:
        error = await chat(alice, "try", "m-1")
        # Not redelivered: the next message is the next call.
        await chat(alice, "again", "m-2")
    assert error["message_type"] == "ERROR"
    assert error["error_code"] == "internal"
    assert "fragile" in error["text_payload"]
    assert calls == 2


async def test_commands_over_http(memory_stack: Stack) -> None:
    typist = build_demo_agent("typist", memory_stack.agent_settings())
    async with (
        memory_stack.running(typist),
        httpx.AsyncClient(base_url=memory_stack.hub.http_url, timeout=WAIT) as http,
    ):

        async def command(kind: str, **body: Any) -> dict[str, Any]:
            response = await http.post(
                "/api/agents/typist/commands", json={"type": kind, "timeout_s": 5, **body}
            )
            assert response.status_code == 200, response.text
            result: dict[str, Any] = response.json()
            return result

        status = await command("status")
        assert status["success"] is True
        summary = json.loads(status["output"])
        assert (summary["agent_id"], summary["status"]) == ("typist", "IDLE")
        assert "pace" in summary["commands"]

        pace = await command("pace", parameters={"ms": "5"})
        assert pace["output"] == "typing at 5 ms per word"
        wrong = await command("pace", content="fast")
        assert (wrong["success"], wrong["exit_code"]) == (False, 1)
        unknown = await command("dance")
        assert (unknown["success"], unknown["exit_code"]) == (False, 2)

        assert (await command("pause"))["success"] is True
        await memory_stack.broker_sees("typist", AgentState.PAUSED)
        agents = (await http.get("/api/agents")).json()
        assert {a["agent_id"]: a["status"] for a in agents}["typist"] == "paused"
        assert (await command("resume"))["success"] is True
        await memory_stack.broker_sees("typist", AgentState.ONLINE)


async def test_the_shutdown_command_stops_and_unregisters_the_agent(memory_stack: Stack) -> None:
    agent = echo(memory_stack.agent_settings())
    await within(agent.start())
    try:
        await memory_stack.ready(agent)
        async with httpx.AsyncClient(base_url=memory_stack.hub.http_url, timeout=WAIT) as http:
            response = await http.post("/api/agents/echo/commands", json={"type": "shutdown"})
            assert response.json()["output"] == "shutting down"
            await within(agent.wait_stopped())
            agents = (await http.get("/api/agents")).json()
        assert {a["agent_id"]: a["is_online"] for a in agents}["echo"] is False
    finally:
        await within(agent.stop())


async def test_a_second_process_cannot_take_a_live_agent_id(memory_stack: Stack) -> None:
    first = echo(memory_stack.agent_settings())
    async with memory_stack.running(first):
        second = echo(memory_stack.agent_settings())
        with pytest.raises(RegistrationRefused):
            await within(second.start())
