"""Agents asking agents through a real hub and the reference broker, on both buses and both
agent transports: ask, ask_stream, ask by capability, what the asked agent sees, typed errors,
the cycle bound, timeouts, and cancellation running down a tree of calls three levels deep.

The test plays the frontend over the WebSocket; hub, broker and agents are the real ones (the
stack of test_sdk_agents.py). On the in-process bus an "amqp" agent shares the hub's bus (the
"memory" transport); on RabbitMQ it opens its own connection.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from agentcomm.gateways.a2a.bridge import A2ABridge
from agentcomm.protocol.calls import CallContext
from agentcomm.protocol.vocabulary import MAX_HOPS
from agentcomm.sdk import (
    Agent,
    AgentOffline,
    AnswerTimeout,
    CallFailed,
    CallRefused,
    Message,
    NoAgentAvailable,
)
from agentcomm.sdk.demo_agents import build_demo_agent, planner_answer, typist_answer
from agentcomm.server.testing import test_settings
from tests.integration.test_agents_guide import GUIDE
from tests.integration.test_sdk_agents import WAIT, Stack, chat, memory_stack, stack, within
from tests.support.a2a import a2a_stack
from tests.support.a2a_remote import remote_agent
from tests.support.frontend import Frontend, of_type

TRANSPORTS = ["grpc", "amqp"]
__all__ = ["memory_stack"]  # a fixture of test_sdk_agents.py, used here too


@pytest.fixture(
    params=[pytest.param("memory"), pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)]
)
async def hub_stack(request: pytest.FixtureRequest) -> AsyncIterator[Stack]:
    overrides: dict[str, str] = {}
    if request.param == "rabbitmq":
        overrides = request.getfixturevalue("rabbitmq_env")
    async with stack(test_settings(**overrides)) as running:
        yield running


def agent_on(running: Stack, agent_id: str, transport: str, **kwargs: Any) -> Agent:
    """An agent taking its work over gRPC, or from the bus ("amqp": the hub's own in-process
    bus, or its own RabbitMQ connection)."""
    shared = transport == "amqp" and running.hub.settings.message_bus == "memory"
    return Agent(
        agent_id,
        agent_id=agent_id,
        settings=running.agent_settings(),
        transport=None if shared else transport,
        bus=running.hub.bus if shared else None,
        **kwargs,
    )


def demo_on(running: Stack, kind: str, transport: str) -> Agent:
    shared = transport == "amqp" and running.hub.settings.message_bus == "memory"
    return build_demo_agent(
        kind,
        running.agent_settings(),
        transport=None if shared else transport,
        bus=running.hub.bus if shared else None,
    )


async def run_all(running: Stack, exits: AsyncExitStack, *agents: Agent) -> None:
    for agent in agents:
        await exits.enter_async_context(running.running(agent))


async def frontend(running: Stack, exits: AsyncExitStack, *, stream: bool = False) -> Frontend:
    capabilities = {"stream": True} if stream else None
    return await exits.enter_async_context(
        await Frontend.registered(running.hub.ws_url, capabilities=capabilities)
    )


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_ask_by_id_and_by_capability_and_what_the_asked_agent_sees(
    hub_stack: Stack, transport: str
) -> None:
    seen: list[tuple[str, CallContext | None, str | None]] = []
    helper = agent_on(hub_stack, "helper", transport, capabilities={"kind": "helper"})

    @helper.on_message
    async def help_out(message: Message) -> str:
        seen.append((message.sender_id, message.call, message.conversation_id))
        return f"helped with {message.text}"

    asker = agent_on(hub_stack, "asker", transport)

    @asker.on_message
    async def ask_around(message: Message) -> str:
        by_id = await message.ask("helper", f"by id: {message.text}")
        by_kind = await message.ask(None, "by kind", capability={"kind": "helper"})
        return f"{by_id} | {by_kind}"

    async with AsyncExitStack() as exits:
        await run_all(hub_stack, exits, helper, asker)
        alice = await frontend(hub_stack, exits)
        reply = await chat(alice, "x", "q-1", receiver_id="asker", conversation_id="conv-1")
        # Outside any handler too: a call of its own, with no question above it.
        outside = await within(asker.ask("helper", "from outside"))

    assert reply["message_type"] == "REPLY", reply
    assert reply["text_payload"] == "helped with by id: x | helped with by kind"
    assert outside == "helped with from outside"
    (sender, call, conversation), (_, second, _), (_, alone, _) = seen
    assert sender == "asker"
    assert call is not None
    assert second is not None
    assert alone is not None
    assert call.asked_by == "asker"
    assert call.in_answer_to == "q-1"
    assert call.origin_message_id == "q-1"
    assert call.origin_sender_id == alice.frontend_id
    assert call.conversation_id == "conv-1"
    assert call.chain == ("asker",)
    # The call is a thread of its own: the frontend's conversation stays pinned to the asker.
    assert conversation is None
    assert second.origin_message_id == "q-1"
    assert (alone.in_answer_to, alone.chain) == (None, ("asker",))


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_ask_stream_passes_the_pieces_on_as_they_come(
    hub_stack: Stack, transport: str
) -> None:
    typist = demo_on(hub_stack, "typist", transport)
    relay = agent_on(hub_stack, "relay", transport)

    @relay.on_message
    async def pass_on(message: Message) -> AsyncIterator[str]:
        async for piece in message.ask_stream("typist", message.text):
            yield piece

    async with AsyncExitStack() as exits:
        await run_all(hub_stack, exits, typist, relay)
        alice = await frontend(hub_stack, exits, stream=True)
        reply = await chat(alice, "three short words", "q-1", receiver_id="relay")
        chunks = [f for f in alice.take_buffered() if f.get("message_type") == "REPLY_CHUNK"]

    assert reply["message_type"] == "REPLY", reply
    assert reply["text_payload"] == typist_answer("three short words")
    assert len(chunks) > 3
    assert "".join(c["text_delta"] for c in chunks) == reply["text_payload"]


async def test_errors_of_calls_are_typed_with_their_codes(hub_stack: Stack) -> None:
    outcomes: dict[str, CallFailed] = {}
    asker = agent_on(hub_stack, "asker", "grpc")

    @asker.on_message
    async def try_everything(message: Message) -> str:
        attempts = {
            "offline": message.ask("nobody-here", "hello?"),
            "no-kind": message.ask(None, "anyone?", capability={"kind": "unicorn"}),
            "self": message.ask("asker", "me?"),
        }
        for name, attempt in attempts.items():
            try:
                await attempt
            except CallFailed as exc:
                outcomes[name] = exc
        return "done"

    async with AsyncExitStack() as exits:
        await run_all(hub_stack, exits, asker)
        alice = await frontend(hub_stack, exits)
        reply = await chat(alice, "go", "q-1", receiver_id="asker")

    assert reply["text_payload"] == "done", reply
    assert isinstance(outcomes["offline"], AgentOffline)
    assert outcomes["offline"].error_code == "agent_offline"
    assert isinstance(outcomes["no-kind"], NoAgentAvailable)
    assert isinstance(outcomes["self"], CallRefused)
    assert outcomes["self"].error_code == "call_cycle"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_cycle_of_calls_is_refused_and_its_code_reaches_the_frontend(
    hub_stack: Stack, transport: str
) -> None:
    ping = agent_on(hub_stack, "ping", transport, capabilities={"role": "ping"})
    pong = agent_on(hub_stack, "pong", transport)

    @ping.on_message
    async def ask_pong(message: Message) -> str:
        return await message.ask("pong", message.text)

    @pong.on_message
    async def ask_ping(message: Message) -> str:
        # By capability the broker applies the rule: ping is the only agent with it.
        return await message.ask(None, message.text, capability={"role": "ping"})

    async with AsyncExitStack() as exits:
        await run_all(hub_stack, exits, ping, pong)
        alice = await frontend(hub_stack, exits)
        reply = await chat(alice, "round and round", "q-1", receiver_id="ping")

    assert reply["message_type"] == "ERROR", reply
    # The broker chose among agents not waiting in the chain: none has the capability.
    assert reply["error_code"] == "no_agent_available", reply


async def test_a_named_cycle_is_refused_with_call_cycle(hub_stack: Stack) -> None:
    ping = agent_on(hub_stack, "ping", "grpc")
    pong = agent_on(hub_stack, "pong", "grpc")

    @ping.on_message
    async def ask_pong(message: Message) -> str:
        return await message.ask("pong", message.text)

    @pong.on_message
    async def ask_ping(message: Message) -> str:
        return await message.ask("ping", message.text)

    async with AsyncExitStack() as exits:
        await run_all(hub_stack, exits, ping, pong)
        alice = await frontend(hub_stack, exits)
        reply = await chat(alice, "round", "q-1", receiver_id="ping")

    assert (reply["message_type"], reply["error_code"]) == ("ERROR", "call_cycle"), reply
    assert "ping → pong → ping" in reply["text_payload"]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_cancel_runs_down_three_levels(hub_stack: Stack, transport: str) -> None:
    started = {name: asyncio.Event() for name in ("top", "middle", "bottom")}
    cancelled = {name: asyncio.Event() for name in ("top", "middle", "bottom")}

    def agent(name: str, asks: str | None) -> Agent:
        made = agent_on(hub_stack, name, transport)

        @made.on_message
        async def handle(message: Message) -> str:
            started[name].set()
            try:
                if asks is None:
                    await asyncio.sleep(60)
                    return "too late"
                return await message.ask(asks, message.text)
            except asyncio.CancelledError:
                cancelled[name].set()
                raise

        return made

    agents = [agent("top", "middle"), agent("middle", "bottom"), agent("bottom", None)]
    async with AsyncExitStack() as exits:
        await run_all(hub_stack, exits, *agents)
        alice = await frontend(hub_stack, exits)
        await alice.send_text("dig", message_id="q-1", receiver_id="top")
        await within(started["bottom"].wait())
        await alice.send({"message_type": "CANCEL", "in_reply_to_message_id": "q-1"})
        final = await alice.next(of_type("REPLY", "ERROR", in_reply_to_message_id="q-1"))
        for name in ("top", "middle", "bottom"):
            await within(cancelled[name].wait())

    assert (final["message_type"], final["error_code"]) == ("ERROR", "cancelled"), final


async def test_a_call_that_times_out_is_cancelled_at_the_agent_asked(hub_stack: Stack) -> None:
    cancelled = asyncio.Event()
    slow = agent_on(hub_stack, "slow", "grpc")

    @slow.on_message
    async def take_forever(message: Message) -> str:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    asker = agent_on(hub_stack, "asker", "grpc")

    @asker.on_message
    async def impatient(message: Message) -> str:
        if message.text == "own timeout":
            # The handler's own deadline: the call is cancelled with it.
            try:
                async with asyncio.timeout(0.5):
                    return await message.ask("slow", message.text)
            except TimeoutError:
                return "gave up on my own"
        try:
            return await message.ask("slow", message.text, timeout=0.5)
        except AnswerTimeout as exc:
            return f"gave up: {exc.error_code}"

    async with AsyncExitStack() as exits:
        await run_all(hub_stack, exits, slow, asker)
        alice = await frontend(hub_stack, exits)
        reply = await chat(alice, "hurry", "q-1", receiver_id="asker")
        await within(cancelled.wait(), WAIT)
        cancelled.clear()
        own = await chat(alice, "own timeout", "q-2", receiver_id="asker")
        await within(cancelled.wait(), WAIT)

    assert reply["text_payload"] == "gave up: answer_timeout", reply
    assert own["text_payload"] == "gave up on my own", own


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_the_planner_asks_echo_and_typist_and_streams_both(
    hub_stack: Stack, transport: str
) -> None:
    agents = [demo_on(hub_stack, kind, transport) for kind in ("echo", "typist", "planner")]
    async with AsyncExitStack() as exits:
        await run_all(hub_stack, exits, *agents)
        alice = await frontend(hub_stack, exits, stream=True)
        reply = await chat(alice, "plan this", "q-1", receiver_id="planner")
        chunks = [f for f in alice.take_buffered() if f.get("message_type") == "REPLY_CHUNK"]

    assert reply["message_type"] == "REPLY", reply
    assert reply["text_payload"] == planner_answer("plan this")
    assert "".join(c["text_delta"] for c in chunks) == reply["text_payload"]


def desk_example() -> str:
    """The ```py block of docs/agents.md's section on asking other agents."""
    section = GUIDE.read_text().split("\n## Asking other agents\n", 1)[1]
    match = re.search(r"^```py\n(.*?)^```$", section, re.MULTILINE | re.DOTALL)
    assert match is not None, "the section has no ```py example"
    return match.group(1)


async def test_the_guides_example_of_asking_runs_as_written(
    memory_stack: Stack, tmp_path: Path
) -> None:
    script = tmp_path / "desk.py"
    script.write_text(desk_example())
    env = {
        **os.environ,
        "MESSAGE_BUS": "memory",
        "GRPC_HOST": "127.0.0.1",
        "GRPC_PORT": str(memory_stack.hub.server.grpc_port),
        "LOG_LEVEL": "WARNING",
    }
    agents = [demo_on(memory_stack, kind, "amqp") for kind in ("echo", "typist")]
    async with AsyncExitStack() as exits:
        await run_all(memory_stack, exits, *agents)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            cwd=tmp_path,
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            await memory_stack.broker_sees("desk")
            alice = await frontend(memory_stack, exits)
            reply = await chat(alice, "hi", "q-1", receiver_id="desk")
            process.send_signal(signal.SIGTERM)
            assert await within(process.wait()) == 0
        finally:
            if process.returncode is None:
                process.kill()
                await within(process.wait())
    assert process.stderr is not None
    errors = (await within(process.stderr.read())).decode()
    assert reply["text_payload"] == f"echo: hi / {typist_answer('hi')}", reply
    assert "Traceback" not in errors, errors


async def test_a_chain_longer_than_max_hops_ends_in_hop_limit(memory_stack: Stack) -> None:
    # Agents that each ask another agent of their kind: the broker never picks one already in
    # the chain, so the chain grows, one new agent a level, until it passes MAX_HOPS.
    hops: list[Agent] = []
    for n in range(MAX_HOPS + 2):
        hop = agent_on(memory_stack, f"hop-{n}", "amqp", capabilities={"role": "hop"})

        @hop.on_message
        async def pass_on(message: Message) -> str:
            return await message.ask(None, message.text, capability={"role": "hop"})

        hops.append(hop)
    async with AsyncExitStack() as exits:
        await run_all(memory_stack, exits, *hops)
        alice = await frontend(memory_stack, exits)
        reply = await chat(alice, "how deep?", "q-1", receiver_id="hop-0")

    assert (reply["message_type"], reply["error_code"]) == ("ERROR", "hop_limit"), reply


async def test_an_outside_a2a_agent_behind_the_bridge_is_asked_the_same_way() -> None:
    async with (
        a2a_stack(test_settings()) as running,
        remote_agent("Remote Typist", "stream", streaming=True) as remote,
    ):
        bridge = A2ABridge(remote.url, running.agent_settings, name="remote-typist")
        await within(bridge.start())
        running.exits.push_async_callback(lambda: within(bridge.stop()))
        asker = Agent("asker", agent_id="asker", settings=running.agent_settings)

        @asker.on_message
        async def ask_outside(message: Message) -> str:
            pieces = [p async for p in message.ask_stream("remote-typist", message.text)]
            return "|".join(pieces)

        await running.run(asker)
        async with await Frontend.registered(running.hub.ws_url) as alice:
            reply = await chat(alice, "a b c", "q-1", receiver_id="asker")
    assert reply["text_payload"] == "<a>|<b>|<c>", reply
