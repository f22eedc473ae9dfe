"""The server's routing decisions (core/routing/), carried out on the in-process bus with fake
sockets (server/routing.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from agentcomm.bus.base import BusUnavailable
from agentcomm.bus.memory import InMemoryBus
from agentcomm.core.answers import AnswerLedger
from agentcomm.core.clock import ManualClock
from agentcomm.core.presence import AgentRegistry
from agentcomm.core.routing import ServerRouter
from agentcomm.core.sessions import FrontendSessions
from agentcomm.core.streams import ReplyStreams
from agentcomm.protocol.errors import ProtocolError
from agentcomm.protocol.models import Envelope
from agentcomm.protocol.vocabulary import ErrorCode
from agentcomm.server.routing import RouteRunner

# Everything here runs on the in-process bus and completes at once; this bounds each test
# should a wait ever hang.
pytestmark = pytest.mark.timeout(10)

SERVER_ID = "server_" + "ab" * 16  # its tag, and so the start of its frontend ids: abababab
BROKER_INPUT = "broker_input_queue"


class Link:
    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []

    def send_frame(self, frame: bytes) -> None:
        self.frames.append(json.loads(frame))

    def take(self) -> list[dict[str, Any]]:
        frames, self.frames = self.frames, []
        return frames


@dataclass
class World:
    bus: InMemoryBus
    clock: ManualClock
    registry: AgentRegistry
    sessions: FrontendSessions
    answers: AnswerLedger
    router: RouteRunner
    alice: str
    alice_link: Link
    bob: str
    bob_link: Link

    async def queue(self, name: str) -> list[dict[str, Any]]:
        """Takes everything waiting in a queue (no consumer runs in these tests)."""
        await self.bus.declare_queue(name)
        stored = self.bus._queues[name].messages
        messages = [json.loads(item.body) for item in stored]
        stored.clear()
        return messages

    async def agent(self, agent_id: str) -> None:
        await self.bus.declare_queue(f"agent_queue_{agent_id}")
        self.registry.register(agent_id, agent_id, "session-" + agent_id)


@pytest.fixture
async def world() -> AsyncIterator[World]:
    bus = InMemoryBus()
    await bus.connect()
    await bus.declare_queue(BROKER_INPUT)
    clock = ManualClock()
    registry = AgentRegistry(clock, agent_timeout=30, stream_grace=3)
    sessions = FrontendSessions(clock, resume_window=60)
    answers = AnswerLedger(clock, delivery_timeout=300)
    router = RouteRunner(
        ServerRouter(
            server_id=SERVER_ID,
            registry=registry,
            sessions=sessions,
            answers=answers,
            streams=ReplyStreams(clock),
        ),
        bus,
        sessions,
    )
    alice_link, bob_link = Link(), Link()
    alice, _ = sessions.register(alice_link, "Alice", {})
    bob, _ = sessions.register(bob_link, "Bob", {})
    try:
        yield World(
            bus,
            clock,
            registry,
            sessions,
            answers,
            router,
            alice.frontend_id,
            alice_link,
            bob.frontend_id,
            bob_link,
        )
    finally:
        await bus.close()


def text(**fields: Any) -> Envelope:
    return Envelope.model_validate({"message_type": "TEXT", "text_payload": "hi", **fields})


def envelope(**fields: Any) -> Envelope:
    return Envelope.model_validate(fields)


def statuses(frames: list[dict[str, Any]]) -> list[tuple[str, str | None, str | None]]:
    return [(f["message_type"], f.get("routing_status"), f.get("error_code")) for f in frames]


# -- from frontends ------------------------------------------------------------------------------


async def test_frontend_text_goes_to_the_broker_with_the_server_side_fields(world: World) -> None:
    await world.router.accept_from_frontend(
        world.alice,
        text(message_id="m1", sender_id="forged", _client_id="forged", _hops=9, error_code="x"),
    )
    [published] = await world.queue(BROKER_INPUT)
    assert published["message_id"] == "m1"
    assert published["sender_id"] == world.alice
    assert published["_client_id"] == world.alice
    assert published["_server_id"] == SERVER_ID
    assert published["_hops"] == 0
    assert published["routing_status"] == "pending"
    assert "error_code" not in published
    assert published["send_timestamp"]
    [echo] = world.alice_link.take()
    assert (echo["message_type"], echo["message_id"], echo["routing_status"]) == (
        "TEXT",
        "m1",
        "pending",
    )
    assert not any(key.startswith("_") for key in echo)
    assert world.bob_link.take() == []


@pytest.mark.parametrize("receiver", ["server", "SERVER", " ", ""])
async def test_receiver_server_or_blank_means_let_the_broker_choose(
    world: World, receiver: str
) -> None:
    await world.router.accept_from_frontend(world.alice, text(receiver_id=receiver))
    [published] = await world.queue(BROKER_INPUT)
    assert "receiver_id" not in published


@pytest.mark.parametrize(
    ("message", "code"),
    [
        (text(text_payload=""), ErrorCode.INVALID_MESSAGE),
        (text(text_payload="  \n"), ErrorCode.INVALID_MESSAGE),
        (envelope(message_type="TEXT"), ErrorCode.INVALID_MESSAGE),
        (envelope(message_type="CANCEL"), ErrorCode.INVALID_MESSAGE),
        (envelope(message_type="REPLY", text_payload="x"), ErrorCode.UNSUPPORTED_TYPE),
        (envelope(message_type="SYSTEM", text_payload="x"), ErrorCode.UNSUPPORTED_TYPE),
    ],
)
async def test_bad_frontend_messages_are_refused(
    world: World, message: Envelope, code: ErrorCode
) -> None:
    with pytest.raises(ProtocolError) as refused:
        await world.router.accept_from_frontend(world.alice, message)
    assert refused.value.code is code
    assert refused.value.in_reply_to == message.message_id
    assert await world.queue(BROKER_INPUT) == []
    assert world.alice_link.take() == []


async def test_a_frontend_cannot_address_another_frontend(world: World) -> None:
    with pytest.raises(ProtocolError) as refused:
        await world.router.accept_from_frontend(world.alice, text(receiver_id=world.bob))
    assert refused.value.code is ErrorCode.UNKNOWN_RECEIVER
    assert await world.queue(BROKER_INPUT) == []
    assert world.bob_link.take() == []


async def test_a_resent_copy_is_not_published_twice(world: World) -> None:
    await world.router.accept_from_frontend(world.alice, text(message_id="m1"))
    await world.router.accept_from_frontend(world.alice, text(message_id="m1"))
    assert len(await world.queue(BROKER_INPUT)) == 1
    assert statuses(world.alice_link.take()) == [("TEXT", "pending", None)] * 2
    # Another frontend may use the same id for its own message.
    await world.router.accept_from_frontend(world.bob, text(message_id="m1"))
    assert len(await world.queue(BROKER_INPUT)) == 1


async def test_bus_down_tells_the_sender_and_allows_a_retry(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def down(*args: Any, **kwargs: Any) -> None:
        raise BusUnavailable("no bus")

    with monkeypatch.context() as patch:
        patch.setattr(world.bus, "publish", down)
        await world.router.accept_from_frontend(world.alice, text(message_id="m1"))
    echo, error = world.alice_link.take()
    assert (echo["message_type"], echo["routing_status"], echo["error_code"]) == (
        "TEXT",
        "error",
        "bus_unavailable",
    )
    assert (error["message_type"], error["error_code"], error["in_reply_to_message_id"]) == (
        "ERROR",
        "bus_unavailable",
        "m1",
    )
    await world.router.accept_from_frontend(world.alice, text(message_id="m1"))
    assert len(await world.queue(BROKER_INPUT)) == 1
    assert statuses(world.alice_link.take()) == [("TEXT", "pending", None)]


def late_reply(world: World, message_id: str, reply_id: str) -> Envelope:
    return envelope(
        message_type="REPLY",
        message_id=reply_id,
        sender_id="agent-1",
        receiver_id=world.alice,
        text_payload="late",
        in_reply_to_message_id=message_id,
        routing_status="routed",
        _client_id=world.alice,
        _server_id=SERVER_ID,
    )


async def refuse(world: World, monkeypatch: pytest.MonkeyPatch, message_id: str) -> None:
    """The bus takes the TEXT but its confirm is lost: the sender is told it was not sent."""

    async def confirm_lost(*args: Any, **kwargs: Any) -> None:
        raise BusUnavailable("no confirm")

    with monkeypatch.context() as patch:
        patch.setattr(world.bus, "publish", confirm_lost)
        await world.router.accept_from_frontend(world.alice, text(message_id=message_id))
    assert statuses(world.alice_link.take()) == [
        ("TEXT", "error", "bus_unavailable"),
        ("ERROR", "error", "bus_unavailable"),
    ]


async def test_an_answer_to_a_refused_text_is_held_back_until_it_is_sent_again(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    await refuse(world, monkeypatch, "m1")
    # The bus had it after all: it is routed and answered, but the sender was told otherwise.
    await world.agent("agent-1")
    routed = text(
        message_id="m1", sender_id=world.alice, receiver_id="agent-1", routing_status="routed"
    )
    await world.router.handle_broker_output(routed)
    await world.router.handle_broker_output(late_reply(world, "m1", "r-late"))
    assert world.alice_link.take() == []
    # Sent again, it is answered with what came, and not handed to the broker twice.
    await world.router.accept_from_frontend(world.alice, text(message_id="m1"))
    frames = world.alice_link.take()
    assert statuses(frames) == [("TEXT", "pending", None), ("REPLY", "routed", None)]
    assert frames[1]["message_id"] == "r-late"
    assert await world.queue(BROKER_INPUT) == []


async def test_a_refused_text_sent_again_gets_one_answer_whichever_copy_answers(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    await refuse(world, monkeypatch, "m1")
    await world.router.accept_from_frontend(world.alice, text(message_id="m1"))
    assert len(await world.queue(BROKER_INPUT)) == 1
    assert statuses(world.alice_link.take()) == [("TEXT", "pending", None)]
    await world.router.handle_broker_output(late_reply(world, "m1", "r-first-copy"))
    await world.router.handle_broker_output(late_reply(world, "m1", "r-second-copy"))
    [reply] = world.alice_link.take()
    assert reply["message_id"] == "r-first-copy"


# -- from agents ----------------------------------------------------------------------------------


async def test_agent_message_goes_to_the_broker_as_the_agent(world: World) -> None:
    published = await world.router.accept_from_agent(
        "agent-1",
        envelope(message_type="REPLY", text_payload="hi", sender_id="forged", receiver_id="x"),
    )
    assert published.sender_id == "agent-1"
    [queued] = await world.queue(BROKER_INPUT)
    assert (queued["sender_id"], queued["routing_status"]) == ("agent-1", "pending")


@pytest.mark.parametrize("kind", ["REGISTER_FRONTEND", "AGENT_STATUS_UPDATE"])
async def test_agents_send_only_chat_messages(world: World, kind: str) -> None:
    with pytest.raises(ProtocolError) as refused:
        await world.router.accept_from_agent("agent-1", envelope(message_type=kind))
    assert refused.value.code is ErrorCode.UNSUPPORTED_TYPE
    assert await world.queue(BROKER_INPUT) == []


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"message_type": "TEXT", "receiver_id": "agent-2"}, ErrorCode.INVALID_MESSAGE),
        ({"message_type": "CANCEL", "receiver_id": "agent-2"}, ErrorCode.INVALID_MESSAGE),
        (
            {"message_type": "TEXT", "text_payload": "hi", "receiver_id": "web_" + "a" * 32},
            ErrorCode.UNKNOWN_RECEIVER,
        ),
    ],
)
async def test_an_agents_text_or_cancel_must_be_complete_and_for_an_agent(
    world: World, fields: dict[str, Any], code: ErrorCode
) -> None:
    with pytest.raises(ProtocolError) as refused:
        await world.router.accept_from_agent("agent-1", envelope(**fields))
    assert refused.value.code is code
    assert await world.queue(BROKER_INPUT) == []


async def test_an_agent_asks_another_agent_through_the_broker(world: World) -> None:
    await world.router.accept_from_agent(
        "agent-1", envelope(message_type="TEXT", text_payload="help?", receiver_id="agent-2")
    )
    [queued] = await world.queue(BROKER_INPUT)
    assert (queued["message_type"], queued["sender_id"]) == ("TEXT", "agent-1")
    assert queued["receiver_id"] == "agent-2"


# -- broker output to agents ----------------------------------------------------------------------


async def routed_from_alice(world: World, receiver: str, message_id: str = "m1") -> Envelope:
    await world.router.accept_from_frontend(world.alice, text(message_id=message_id))
    [published] = await world.queue(BROKER_INPUT)
    world.alice_link.take()
    return Envelope.model_validate(
        {**published, "receiver_id": receiver, "routing_status": "routed"}
    )


async def test_routed_text_reaches_the_agent_queue_and_the_sender_sees_its_progress(
    world: World,
) -> None:
    await world.agent("agent-1")
    await world.router.handle_broker_output(await routed_from_alice(world, "agent-1"))
    [queued] = await world.queue("agent_queue_agent-1")
    assert queued["message_id"] == "m1"
    assert queued["receiver_id"] == "agent-1"
    assert queued["sender_id"] == world.alice
    assert statuses(world.alice_link.take()) == [
        ("TEXT", "routed", None),
        ("TEXT", "delivered", None),
    ]
    assert world.bob_link.take() == []
    assert world.answers.agent_for(world.alice, "m1") == "agent-1"


async def test_cancel_names_the_agent_working_on_the_message(world: World) -> None:
    await world.agent("agent-1")
    await world.router.handle_broker_output(await routed_from_alice(world, "agent-1"))
    world.alice_link.take()
    await world.router.accept_from_frontend(
        world.alice, envelope(message_type="CANCEL", in_reply_to_message_id="m1")
    )
    [cancel] = await world.queue(BROKER_INPUT)
    assert (cancel["message_type"], cancel["receiver_id"]) == ("CANCEL", "agent-1")
    assert world.alice_link.take() == []  # a CANCEL has no status echoes


@pytest.mark.parametrize(
    ("prepare", "code"),
    [
        ("unknown", ErrorCode.UNKNOWN_RECEIVER),
        ("offline", ErrorCode.AGENT_OFFLINE),
        ("no-queue", ErrorCode.AGENT_OFFLINE),
        ("blank", ErrorCode.UNKNOWN_RECEIVER),
    ],
)
async def test_undeliverable_text_is_an_error_for_its_sender(
    world: World, prepare: str, code: ErrorCode
) -> None:
    receiver = {"blank": "", "unknown": "ghost"}.get(prepare, "agent-1")
    if prepare == "offline":
        await world.agent("agent-1")
        world.registry.unregister("agent-1")
    elif prepare == "no-queue":
        world.registry.register("agent-1", "A", "s")
    await world.router.handle_broker_output(await routed_from_alice(world, receiver))
    frames = world.alice_link.take()
    if prepare == "no-queue":
        # The broker did route it; handing it to the agent's queue is what failed.
        routed = frames.pop(0)
        assert (routed["message_type"], routed["routing_status"]) == ("TEXT", "routed")
    echo, error = frames
    assert (echo["message_type"], echo["message_id"], echo["routing_status"]) == (
        "TEXT",
        "m1",
        "error",
    )
    assert echo["error_code"] == code.value
    assert (error["message_type"], error["error_code"], error["in_reply_to_message_id"]) == (
        "ERROR",
        code.value,
        "m1",
    )
    assert error["receiver_id"] == world.alice
    assert world.bob_link.take() == []


async def test_routing_after_the_bus_confirms_waits_for_the_pending_echo(world: World) -> None:
    """The broker may answer before the publish confirm returns: the sender must still see
    pending before routed."""
    await world.agent("agent-1")
    stored, release = asyncio.Event(), asyncio.Event()
    real_publish = world.bus.publish

    async def slow_publish(queue: str, body: bytes, **kwargs: Any) -> None:
        await real_publish(queue, body, **kwargs)
        if queue == BROKER_INPUT:
            stored.set()
            await release.wait()

    world.bus.publish = slow_publish  # type: ignore[method-assign]
    sending = asyncio.create_task(
        world.router.accept_from_frontend(world.alice, text(message_id="m1"))
    )
    async with asyncio.timeout(5):
        await stored.wait()
    [published] = await world.queue(BROKER_INPUT)
    routed = Envelope.model_validate(
        {**published, "receiver_id": "agent-1", "routing_status": "routed"}
    )
    routing = asyncio.create_task(world.router.handle_broker_output(routed))
    # Routing holds back while the pending echo has not gone out.
    done, _ = await asyncio.wait({routing}, timeout=0.05)
    assert not done
    assert world.alice_link.frames == []
    release.set()
    async with asyncio.timeout(5):
        await asyncio.gather(sending, routing)
    assert statuses(world.alice_link.take()) == [
        ("TEXT", "pending", None),
        ("TEXT", "routed", None),
        ("TEXT", "delivered", None),
    ]


# -- broker output to frontends --------------------------------------------------------------------


async def test_two_frontends_using_the_same_message_id_each_get_their_answer(
    world: World,
) -> None:
    def reply_to(frontend_id: str, reply_id: str) -> Envelope:
        return envelope(
            message_type="REPLY",
            message_id=reply_id,
            sender_id="agent-1",
            receiver_id=frontend_id,
            text_payload=f"for {frontend_id}",
            in_reply_to_message_id="1",
            routing_status="routed",
        )

    await world.router.accept_from_frontend(world.alice, text(message_id="1"))
    await world.router.accept_from_frontend(world.bob, text(message_id="1"))
    assert len(await world.queue(BROKER_INPUT)) == 2
    await world.router.handle_broker_output(reply_to(world.alice, "r-alice"))
    await world.router.handle_broker_output(reply_to(world.bob, "r-bob"))
    await world.router.handle_broker_output(reply_to(world.bob, "r-bob-again"))
    assert [f["message_id"] for f in world.alice_link.take() if f["message_type"] == "REPLY"] == [
        "r-alice"
    ]
    assert [f["message_id"] for f in world.bob_link.take() if f["message_type"] == "REPLY"] == [
        "r-bob"
    ]


async def test_reply_goes_to_its_frontend_only_and_once(world: World) -> None:
    reply = envelope(
        message_type="REPLY",
        message_id="r1",
        sender_id="agent-1",
        receiver_id=world.bob,
        text_payload="hello",
        in_reply_to_message_id="m1",
        routing_status="routed",
        _client_id=world.bob,
        _server_id=SERVER_ID,
    )
    await world.router.handle_broker_output(reply)
    await world.router.handle_broker_output(reply.model_copy(update={"message_id": "r2"}))
    [got] = world.bob_link.take()
    assert (got["message_type"], got["message_id"], got["text_payload"]) == ("REPLY", "r1", "hello")
    assert not any(key.startswith("_") for key in got)
    assert world.alice_link.take() == []


async def test_chunks_reach_only_frontends_that_stream(world: World) -> None:
    streamer_link = Link()
    streamer, _ = world.sessions.register(streamer_link, "S", {"stream": True})
    for frontend_id in (streamer.frontend_id, world.bob):
        await world.router.handle_broker_output(
            envelope(
                message_type="REPLY_CHUNK",
                message_id=f"r-{frontend_id}",
                receiver_id=frontend_id,
                in_reply_to_message_id=f"m-{frontend_id}",
                seq=0,
                text_delta="he",
                routing_status="routed",
            )
        )
    assert [frame["seq"] for frame in streamer_link.take()] == [0]
    assert world.bob_link.take() == []


async def test_reply_for_a_frontend_of_another_server_goes_to_that_server(world: World) -> None:
    # A frontend id starts with the tag of the server holding its socket.
    await world.bus.declare_queue("server_queue_0badc0de")
    reply = envelope(
        message_type="REPLY",
        message_id="r1",
        receiver_id="web_0badc0de" + "1" * 24,
        text_payload="hi",
        routing_status="routed",
    )
    await world.router.handle_broker_output(reply)
    [forwarded] = await world.queue("server_queue_0badc0de")
    assert forwarded["message_id"] == "r1"


async def test_reply_for_a_gone_frontend_of_this_server_is_dropped(world: World) -> None:
    reply = envelope(
        message_type="REPLY",
        receiver_id="web_abababab" + "2" * 24,
        text_payload="hi",
        routing_status="routed",
    )
    await world.router.handle_broker_output(reply)
    assert world.alice_link.take() == []
    assert world.bob_link.take() == []


# -- errors from the broker ------------------------------------------------------------------------


@pytest.mark.parametrize("receiver", ["web", "server", "Server", "", None])
async def test_broker_error_reaches_the_sender(world: World, receiver: str | None) -> None:
    error = envelope(
        message_type="ERROR",
        message_id="e1",
        sender_id=world.alice,
        receiver_id=world.alice if receiver == "web" else receiver,
        text_payload="no agent",
        in_reply_to_message_id="m1",
        routing_status="error",
        error_code="no_agent_available",
    )
    await world.router.handle_broker_output(error)
    echo, got = world.alice_link.take()
    assert (echo["message_type"], echo["message_id"], echo["routing_status"]) == (
        "TEXT",
        "m1",
        "error",
    )
    assert (got["message_type"], got["message_id"], got["error_code"]) == (
        "ERROR",
        "e1",
        "no_agent_available",
    )
    assert world.bob_link.take() == []


async def test_broker_error_for_an_agent_goes_to_its_queue(world: World) -> None:
    await world.agent("agent-1")
    await world.router.handle_broker_output(
        envelope(
            message_type="ERROR",
            sender_id="broker_1",
            receiver_id="agent-1",
            in_reply_to_message_id="r1",
            routing_status="error",
            error_code="unknown_receiver",
        )
    )
    [queued] = await world.queue("agent_queue_agent-1")
    assert (queued["message_type"], queued["error_code"]) == ("ERROR", "unknown_receiver")
    assert queued["send_timestamp"]  # the broker gave none; every ERROR says when


async def test_error_with_no_one_to_tell_is_dropped_quietly(world: World) -> None:
    await world.router.handle_broker_output(
        envelope(message_type="ERROR", routing_status="error", error_code="internal")
    )
    await world.router.handle_broker_output(
        envelope(message_type="ERROR", receiver_id="ghost-agent", routing_status="error")
    )
    assert world.alice_link.take() == []


async def test_an_error_after_the_reply_is_dropped(world: World) -> None:
    await world.agent("agent-1")
    await world.router.handle_broker_output(await routed_from_alice(world, "agent-1"))
    world.alice_link.take()
    await world.router.handle_broker_output(
        envelope(
            message_type="REPLY",
            receiver_id=world.alice,
            in_reply_to_message_id="m1",
            text_payload="done",
            routing_status="routed",
        )
    )
    await world.router.handle_broker_output(
        envelope(
            message_type="ERROR",
            receiver_id=world.alice,
            in_reply_to_message_id="m1",
            routing_status="error",
            error_code="agent_offline",
        )
    )
    assert statuses(world.alice_link.take()) == [("REPLY", "routed", None)]


async def test_messages_of_an_agent_that_stays_offline_are_answered_for_it(world: World) -> None:
    await world.agent("agent-1")
    await world.router.handle_broker_output(await routed_from_alice(world, "agent-1"))
    world.alice_link.take()
    world.answers.agent_offline("agent-1")
    world.clock.advance(299)
    assert await world.router.answer_abandoned() == 0
    world.clock.advance(1)
    assert await world.router.answer_abandoned() == 1
    echo, error = world.alice_link.take()
    assert (echo["routing_status"], echo["error_code"]) == ("error", "agent_offline")
    assert (error["message_type"], error["error_code"], error["in_reply_to_message_id"]) == (
        "ERROR",
        "agent_offline",
        "m1",
    )
    assert await world.router.answer_abandoned() == 0


def routed_call(asked: str) -> Envelope:
    """Agent `asker`'s TEXT call-1 to `asked`, as the broker routed it."""
    return envelope(
        message_type="TEXT",
        message_id="call-1",
        sender_id="asker",
        receiver_id=asked,
        text_payload="help?",
        routing_status="routed",
    )


async def test_an_agent_asking_an_agent_that_stays_offline_gets_agent_offline(
    world: World,
) -> None:
    await world.agent("asker")
    await world.agent("asked")
    call = routed_call("asked")
    await world.router.handle_broker_output(call)
    assert [m["message_id"] for m in await world.queue("agent_queue_asked")] == ["call-1"]
    world.answers.agent_offline("asked")
    world.clock.advance(300)
    assert await world.router.answer_abandoned() == 1
    [error] = await world.queue("agent_queue_asker")
    assert (error["message_type"], error["error_code"], error["in_reply_to_message_id"]) == (
        "ERROR",
        "agent_offline",
        "call-1",
    )


async def test_a_call_answered_in_time_is_no_longer_looked_after(world: World) -> None:
    await world.agent("asker")
    await world.agent("asked")
    await world.router.handle_broker_output(routed_call("asked"))
    await world.router.handle_broker_output(
        envelope(
            message_type="REPLY",
            sender_id="asked",
            receiver_id="asker",
            in_reply_to_message_id="call-1",
            text_payload="here",
            routing_status="routed",
        )
    )
    world.answers.agent_offline("asked")
    world.clock.advance(300)
    assert await world.router.answer_abandoned() == 0


async def test_an_agents_cancel_of_a_call_by_capability_names_the_agent_it_went_to(
    world: World,
) -> None:
    await world.agent("asker")
    await world.agent("chosen")
    await world.router.handle_broker_output(routed_call("chosen"))
    await world.router.accept_from_agent(
        "asker", envelope(message_type="CANCEL", in_reply_to_message_id="call-1")
    )
    [cancel] = await world.queue(BROKER_INPUT)
    assert (cancel["message_type"], cancel["receiver_id"]) == ("CANCEL", "chosen")


def just_started(world: World, expect_agents_for: float) -> RouteRunner:
    """A router of a server that has just started, on the world's parts."""
    decisions = ServerRouter(
        server_id=SERVER_ID,
        registry=world.registry,
        sessions=world.sessions,
        answers=world.answers,
        streams=ReplyStreams(world.clock),
        clock=world.clock,
        expect_agents_for=expect_agents_for,
    )
    return RouteRunner(decisions, world.bus, world.sessions)


async def test_a_new_server_lets_messages_wait_for_agents_of_the_server_before_it(
    world: World,
) -> None:
    router = just_started(world, expect_agents_for=30)
    # The agent is not registered with this server yet, but its queue is there from before.
    await world.bus.declare_queue("agent_queue_agent-1")
    await router.handle_broker_output(await routed_from_alice(world, "agent-1"))
    [queued] = await world.queue("agent_queue_agent-1")
    assert queued["message_id"] == "m1"
    assert statuses(world.alice_link.take()) == [
        ("TEXT", "routed", None),
        ("TEXT", "delivered", None),
    ]
    # It does not come back: after DELIVERY_TIMEOUT its sender is told.
    world.clock.advance(300)
    assert await router.answer_abandoned() == 1
    assert statuses(world.alice_link.take()) == [
        ("TEXT", "error", "agent_offline"),
        ("ERROR", "error", "agent_offline"),
    ]


async def test_a_new_server_still_refuses_agents_without_a_queue_or_after_the_grace(
    world: World,
) -> None:
    router = just_started(world, expect_agents_for=30)
    await router.handle_broker_output(await routed_from_alice(world, "nobody", "m1"))
    assert statuses(world.alice_link.take()) == [
        ("TEXT", "error", "unknown_receiver"),
        ("ERROR", "error", "unknown_receiver"),
    ]
    world.clock.advance(31)
    await world.bus.declare_queue("agent_queue_agent-1")
    await router.handle_broker_output(await routed_from_alice(world, "agent-1", "m2"))
    assert statuses(world.alice_link.take()) == [
        ("TEXT", "error", "unknown_receiver"),
        ("ERROR", "error", "unknown_receiver"),
    ]
    assert await world.queue("agent_queue_agent-1") == []


async def test_an_agent_back_in_time_after_a_server_restart_keeps_its_messages(
    world: World,
) -> None:
    router = just_started(world, expect_agents_for=30)
    # As the hub does: presence tells the ledger who is back.
    world.registry.subscribe(
        lambda delta: [world.answers.agent_online(i.agent_id) for i in delta if i.is_online]
    )
    await world.bus.declare_queue("agent_queue_agent-1")
    await router.handle_broker_output(await routed_from_alice(world, "agent-1"))
    world.alice_link.take()
    world.clock.advance(5)
    await world.agent("agent-1")  # registers with the new server
    world.clock.advance(600)
    assert await router.answer_abandoned() == 0
    assert world.alice_link.take() == []


async def test_an_answer_lost_with_a_broken_connection_is_given_again_on_a_resend(
    world: World,
) -> None:
    await world.agent("agent-1")
    await world.router.handle_broker_output(await routed_from_alice(world, "agent-1"))
    reply = late_reply(world, "m1", "r1").model_copy(update={"text_payload": "the answer"})
    await world.router.handle_broker_output(reply)
    assert [f["message_id"] for f in world.alice_link.take() if f["message_type"] == "REPLY"] == [
        "r1"
    ]
    # Sent again on the same connection: the answer is on its way there; the frame back says
    # so (a `delivered` echo), and is no second answer.
    await world.router.accept_from_frontend(world.alice, text(message_id="m1"))
    assert statuses(world.alice_link.take()) == [("TEXT", "delivered", None)]
    # The connection broke before the answer arrived; resumed on a new one, the frontend sends
    # the TEXT again and gets the answer again.
    session = world.sessions.get(world.alice)
    assert session is not None
    again = Link()
    world.sessions.register(
        again, "Alice", {}, frontend_id=world.alice, resume_token=session.resume_token
    )
    await world.router.accept_from_frontend(world.alice, text(message_id="m1"))
    [given_again] = again.take()
    assert (given_again["message_id"], given_again["text_payload"]) == ("r1", "the answer")
    assert await world.queue(BROKER_INPUT) == []


# -- every frame gets a frame back -----------------------------------------------------------------


@pytest.mark.parametrize("target", ["never-sent", "m1-of-bob"])
async def test_a_cancel_of_an_unknown_message_is_answered_unknown_message(
    world: World, target: str
) -> None:
    await world.router.accept_from_frontend(world.bob, text(message_id="m1-of-bob"))
    world.bob_link.take()
    cancel = envelope(message_type="CANCEL", message_id="c1", in_reply_to_message_id=target)
    with pytest.raises(ProtocolError) as refused:
        await world.router.accept_from_frontend(world.alice, cancel)
    assert refused.value.code is ErrorCode.UNKNOWN_MESSAGE
    assert refused.value.in_reply_to == "c1"
    assert [m["message_type"] for m in await world.queue(BROKER_INPUT)] == ["TEXT"]


async def test_a_cancel_of_an_answered_message_is_answered_unknown_message(world: World) -> None:
    await world.agent("agent-1")
    await world.router.handle_broker_output(await routed_from_alice(world, "agent-1"))
    await world.router.handle_broker_output(late_reply(world, "m1", "r1"))
    world.alice_link.take()
    cancel = envelope(message_type="CANCEL", message_id="c1", in_reply_to_message_id="m1")
    with pytest.raises(ProtocolError) as refused:
        await world.router.accept_from_frontend(world.alice, cancel)
    assert refused.value.code is ErrorCode.UNKNOWN_MESSAGE
    assert await world.queue(BROKER_INPUT) == []


async def test_a_cancel_of_a_message_just_sent_goes_on(world: World) -> None:
    await world.router.accept_from_frontend(world.alice, text(message_id="m1"))
    await world.router.accept_from_frontend(
        world.alice, envelope(message_type="CANCEL", in_reply_to_message_id="m1")
    )
    assert [m["message_type"] for m in await world.queue(BROKER_INPUT)] == ["TEXT", "CANCEL"]


async def test_an_id_reused_after_its_answer_was_forgotten_is_a_duplicate(
    world: World,
) -> None:
    await world.agent("agent-1")
    await world.router.handle_broker_output(await routed_from_alice(world, "agent-1"))
    await world.router.handle_broker_output(late_reply(world, "m1", "r1"))
    session = world.sessions.get(world.alice)
    assert session is not None
    session.finals.clear()  # as after many later answers
    world.alice_link.take()
    await world.router.accept_from_frontend(world.alice, text(message_id="m1"))
    [error] = world.alice_link.take()
    assert (error["message_type"], error["error_code"], error["in_reply_to_message_id"]) == (
        "ERROR",
        "duplicate_message_id",
        "m1",
    )
    assert await world.queue(BROKER_INPUT) == []


# -- SYSTEM notices --------------------------------------------------------------------------------


def system(world: World, sender: str, receiver: str) -> Envelope:
    return envelope(
        message_type="SYSTEM",
        message_id=f"s-{sender}-{receiver}",
        sender_id=sender,
        receiver_id=receiver,
        text_payload="notice",
        routing_status="routed",
    )


async def test_an_agent_sends_system_only_to_a_frontend_that_wrote_to_it(world: World) -> None:
    await world.agent("agent-1")
    await world.agent("agent-2")
    await world.router.handle_broker_output(await routed_from_alice(world, "agent-1"))
    world.alice_link.take()
    await world.router.handle_broker_output(system(world, "agent-1", world.alice))
    assert [f["message_type"] for f in world.alice_link.take()] == ["SYSTEM"]
    # Neither to a frontend that never wrote to it, nor from another agent.
    await world.router.handle_broker_output(system(world, "agent-1", world.bob))
    await world.router.handle_broker_output(system(world, "agent-2", world.alice))
    assert world.bob_link.take() == []
    assert world.alice_link.take() == []
    refusals = await world.queue("agent_queue_agent-2")
    assert [(m["message_type"], m["error_code"]) for m in refusals] == [
        ("ERROR", "unknown_receiver")
    ]


async def test_system_from_whom_is_not_an_agent_still_reaches_a_frontend(world: World) -> None:
    await world.router.handle_broker_output(system(world, "broker_1", world.bob))
    assert [f["message_type"] for f in world.bob_link.take()] == ["SYSTEM"]
