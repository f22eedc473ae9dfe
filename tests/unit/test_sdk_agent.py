"""The Agent's lifecycle against an in-memory hub: registration, heartbeats, commands, work over
the gRPC stream and over a bus, reconnects, and stopping."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

import pytest

from agentcomm.bus import Delivery
from agentcomm.bus.memory import InMemoryBus
from agentcomm.config import Settings
from agentcomm.protocol import (
    Envelope,
    ErrorCode,
    MessageType,
    decode_envelope,
    encode_for_bus,
)
from agentcomm.protocol.queues import BROKER_INPUT_QUEUE, agent_queue
from agentcomm.sdk import (
    Agent,
    Command,
    HubUnavailable,
    Message,
    RegistrationRefused,
)
from agentcomm.sdk.testing import Ack, InMemoryHub

WAIT = 5.0
T = TypeVar("T")


async def within(awaitable: Awaitable[T]) -> T:
    async with asyncio.timeout(WAIT):
        return await awaitable


def settings(**overrides: object) -> Settings:
    values: dict[str, object] = {
        "message_bus": "memory",
        "heartbeat_interval": 1,
        "shutdown_timeout": 2.0,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def text(body: str = "hi", message_id: str = "m1", sender: str = "web_1") -> Envelope:
    return Envelope(
        message_type=MessageType.TEXT,
        message_id=message_id,
        sender_id=sender,
        text_payload=body,
    )


def echo_agent(hub: InMemoryHub, **kwargs: object) -> Agent:
    agent = Agent("echo", settings=settings(), hub=hub, **kwargs)  # type: ignore[arg-type]

    @agent.on_message
    async def handle(message: Message) -> str:
        return f"echo: {message.text}"

    return agent


class Gate:
    """A handler that waits until the test lets it finish."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, message: Message) -> str:
        self.started.set()
        await self.release.wait()
        return f"done: {message.text}"


def gated_agent(hub: InMemoryHub, gate: Gate, **overrides: object) -> Agent:
    agent = Agent("gated", settings=settings(**overrides), hub=hub)
    agent.on_message(gate)
    return agent


async def test_registers_heartbeats_and_unregisters_on_exit() -> None:
    hub = InMemoryHub()
    agent = echo_agent(hub, capabilities={"lang": "en"}, version="1.2")
    async with agent:
        registration = await hub.next_registration()
        assert registration.agent_id == "echo"
        assert registration.agent_name == "echo"
        assert registration.version == "1.2"
        assert dict(registration.capabilities) == {"lang": "en"}
        assert registration.hostname
        assert agent.id == "echo"
        beat = await hub.heartbeat_with("IDLE")
        assert beat.metrics["in_flight"] == "0"
        assert agent.is_running
    assert await within(hub.unregistered.get()) == "echo"
    assert not agent.is_running
    assert not hub.closed  # a hub passed in belongs to the caller


async def test_the_server_assigns_an_id_when_the_name_is_not_one() -> None:
    hub = InMemoryHub(assign_id="agent_42")
    agent = Agent("My Agent", settings=settings(), hub=hub)
    agent.on_message(Gate())
    async with agent:
        assert (await hub.next_registration()).agent_id == ""
        assert agent.id == "agent_42"


async def test_a_message_over_the_grpc_stream_is_answered_then_acked() -> None:
    hub = InMemoryHub()
    async with echo_agent(hub):
        await hub.deliver(text("hello"))
        ack = await hub.next_ack()
        assert (ack.message_id, ack.handled) == ("m1", True)
        reply = hub.sent.get_nowait()  # published before the ack
        assert reply.message_type is MessageType.REPLY
        assert reply.text_payload == "echo: hello"
        assert reply.sender_id == "echo"
        assert reply.receiver_id == "web_1"


async def test_a_failing_handler_answers_an_error_and_the_message_is_acked() -> None:
    hub = InMemoryHub()
    agent = Agent("broken", settings=settings(), hub=hub)

    @agent.on_message
    async def handle(message: Message) -> str:
        raise RuntimeError("oops")

    async with agent:
        await hub.deliver(text())
        assert (await hub.next_ack()).handled
        error = hub.sent.get_nowait()
        assert error.error_code == ErrorCode.INTERNAL.value


async def test_a_streamed_reply_over_grpc() -> None:
    hub = InMemoryHub()
    agent = Agent("streamer", settings=settings(), hub=hub)

    @agent.on_message
    async def handle(message: Message) -> AsyncIterator[str]:
        for word in message.text.split():
            yield word + " "

    async with agent:
        await hub.deliver(text("a b c"))
        await hub.next_ack()
        sent = [hub.sent.get_nowait() for _ in range(4)]
        assert [e.seq for e in sent[:3]] == [0, 1, 2]
        assert sent[3].message_type is MessageType.REPLY
        assert sent[3].text_payload == "a b c "


async def test_the_heartbeat_reports_busy_while_a_handler_runs() -> None:
    hub = InMemoryHub(heartbeat_interval=30)
    gate = Gate()
    async with gated_agent(hub, gate):
        await hub.heartbeat_with("IDLE")
        await hub.deliver(text())
        await within(gate.started.wait())
        busy = await hub.heartbeat_with("BUSY")  # at once, not after 30 s
        assert busy.metrics["in_flight"] == "1"
        gate.release.set()
        await hub.next_ack()
        await hub.heartbeat_with("IDLE")


async def test_cancel_over_grpc_stops_the_handler() -> None:
    hub = InMemoryHub()
    gate = Gate()
    async with gated_agent(hub, gate):
        await hub.deliver(text())
        await within(gate.started.wait())
        await hub.deliver(
            Envelope(
                message_type=MessageType.CANCEL,
                message_id="c1",
                sender_id="web_1",
                in_reply_to_message_id="m1",
            )
        )
        acks = {(await hub.next_ack()).message_id for _ in range(2)}
        assert acks == {"m1", "c1"}
        error = await hub.next_sent()
        assert error.error_code == ErrorCode.CANCELLED.value
        assert error.in_reply_to_message_id == "m1"


async def test_pause_and_resume_commands_change_status_and_intake() -> None:
    hub = InMemoryHub(heartbeat_interval=30)
    async with echo_agent(hub) as agent:
        await hub.heartbeat_with("IDLE")
        await hub.send_command(Command("c1", "pause"))
        command_id, outcome = await hub.next_result()
        assert (command_id, outcome.success) == ("c1", True)
        await hub.heartbeat_with("PAUSED")
        await hub.deliver(text())
        assert (await hub.next_ack()).handled
        refused = hub.sent.get_nowait()
        assert refused.error_code == ErrorCode.AGENT_OFFLINE.value
        await hub.send_command(Command("c2", "status"))
        _, status = await hub.next_result()
        summary = json.loads(status.output)
        assert summary["status"] == "PAUSED"
        assert summary["agent_id"] == "echo"
        assert summary["refused"] == 1
        await hub.send_command(Command("c3", "resume"))
        await hub.next_result()
        await hub.heartbeat_with("IDLE")
        assert agent.status.value == "IDLE"


async def test_a_user_command_answers_through_the_hub() -> None:
    hub = InMemoryHub()
    agent = echo_agent(hub)

    @agent.command("reverse")
    async def reverse(content: str, parameters: dict[str, str]) -> str:
        return content[::-1]

    async with agent:
        await hub.send_command(Command("c1", "reverse", content="abc"))
        _, outcome = await hub.next_result()
        assert outcome.output == "cba"


async def test_the_shutdown_command_stops_the_agent() -> None:
    hub = InMemoryHub()
    agent = echo_agent(hub)
    await within(agent.start())
    await hub.send_command(Command("c1", "shutdown"))
    assert (await hub.next_result())[1].output == "shutting down"
    await within(agent.wait_stopped())
    assert await within(hub.unregistered.get()) == "echo"
    await within(agent.stop())  # idempotent


async def test_a_refused_registration_fails_start() -> None:
    hub = InMemoryHub()
    hub.register_errors.append(RegistrationRefused("echo is taken"))
    with pytest.raises(RegistrationRefused, match="taken"):
        await within(echo_agent(hub).start())


async def test_start_keeps_trying_while_the_server_is_unreachable() -> None:
    hub = InMemoryHub()
    hub.register_errors.extend([HubUnavailable("down"), HubUnavailable("still down")])
    async with echo_agent(hub) as agent:
        assert agent.id == "echo"


async def test_the_agent_comes_back_after_the_server_went_away() -> None:
    hub = InMemoryHub()
    async with echo_agent(hub):
        await hub.next_registration()
        await within(hub.message_streams_opened.get())
        hub.go_down()
        hub.come_back()
        assert (await hub.next_registration()).agent_id == "echo"
        await within(hub.message_streams_opened.get())
        await hub.deliver(text("again"))
        assert (await hub.next_ack()).handled
        assert hub.sent.get_nowait().text_payload == "echo: again"


async def test_the_agent_registers_again_when_the_server_forgot_it() -> None:
    hub = InMemoryHub()
    async with echo_agent(hub):
        await hub.next_registration()
        hub.forget_agents()
        assert (await hub.next_registration()).agent_id == "echo"


async def test_stop_lets_a_message_in_progress_finish_before_unregistering() -> None:
    hub = InMemoryHub()
    gate = Gate()
    agent = gated_agent(hub, gate)
    await within(agent.start())
    await hub.deliver(text())
    await within(gate.started.wait())
    stopping = asyncio.create_task(agent.stop())
    await asyncio.sleep(0)
    assert not stopping.done()
    gate.release.set()
    await within(stopping)
    assert hub.sent.get_nowait().text_payload == "done: hi"
    assert hub.acks.get_nowait().handled
    assert hub.unregistered.get_nowait() == "gated"


async def test_stop_gives_back_a_message_that_outlasts_the_shutdown_timeout() -> None:
    hub = InMemoryHub()
    gate = Gate()
    agent = gated_agent(hub, gate, shutdown_timeout=0.2)
    await within(agent.start())
    await hub.deliver(text())
    await within(gate.started.wait())
    await within(agent.stop())
    assert hub.sent.empty()  # no reply, no error: another agent will take it
    assert hub.acks.empty()  # unacked: the server puts it back when the stream closes
    assert hub.unregistered.get_nowait() == "gated"


async def test_an_agent_without_a_handler_does_not_start() -> None:
    agent = Agent("empty", settings=settings(), hub=InMemoryHub())
    with pytest.raises(RuntimeError, match="on_message"):
        await within(agent.start())


async def test_builtin_command_names_are_reserved() -> None:
    agent = Agent("a", settings=settings(), hub=InMemoryHub())
    with pytest.raises(ValueError, match="built-in"):
        agent.command("pause")


async def test_work_from_a_shared_bus() -> None:
    bus = InMemoryBus()
    await within(bus.connect())
    await within(bus.declare_queue(agent_queue("echo")))
    await within(bus.declare_queue(BROKER_INPUT_QUEUE))
    published: asyncio.Queue[Envelope] = asyncio.Queue()

    async def take(delivery: Delivery) -> None:
        await published.put(decode_envelope(delivery.body))

    await within(bus.consume(BROKER_INPUT_QUEUE, take))
    hub = InMemoryHub()
    try:
        async with echo_agent(hub, bus=bus) as agent:
            assert agent.transport == "memory"  # the in-process bus, named as such
            message = text("over the bus")
            await within(
                bus.publish(
                    agent_queue("echo"), encode_for_bus(message), message_id=message.message_id
                )
            )
            reply = await within(published.get())
            assert reply.text_payload == "echo: over the bus"
            assert reply.in_reply_to_message_id == "m1"
        assert bus.is_connected  # a bus passed in belongs to the caller
        assert hub.message_streams_opened.empty()  # no gRPC stream for bus work
    finally:
        await within(bus.close())


async def test_messages_arriving_while_stopping_are_left_for_the_server_to_give_back() -> None:
    hub = InMemoryHub()
    gate = Gate()
    agent = gated_agent(hub, gate)
    await within(agent.start())
    await hub.deliver(text("first", "m1"))
    await within(gate.started.wait())
    stopping = asyncio.create_task(agent.stop())
    for _ in range(3):
        await asyncio.sleep(0)  # let the stop begin
    await hub.deliver(text("second", "m2"))
    gate.release.set()
    await within(stopping)
    assert hub.sent.get_nowait().text_payload == "done: first"
    assert hub.sent.empty()
    assert hub.acks.get_nowait() == Ack("m1", True)
    assert hub.acks.empty()  # m2: neither handled nor acked
