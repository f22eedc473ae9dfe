"""What the server does with broker output it cannot deliver, and with errors the broker
reports: the sender is told, with the contract's error code; nobody else hears of it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import pytest

from agentcomm.bus.base import Bus
from agentcomm.server.testing import HubEndpoints, running_hub, test_settings
from tests.support.agent import GrpcAgent
from tests.support.bus import (
    BROKER_INPUT_QUEUE,
    SERVER_INPUT_QUEUE,
    QueueTap,
    agent_queue,
    broker_error,
    publish_json,
    routed,
    tap,
)
from tests.support.frontend import Frontend, of_type
from tests.support.waiting import wait_until


@dataclass
class Scene:
    hub: HubEndpoints
    bus: Bus
    broker_in: QueueTap
    alice: Frontend
    bob: Frontend
    stack: AsyncExitStack

    @property
    def alice_id(self) -> str:
        assert self.alice.frontend_id is not None
        return self.alice.frontend_id

    @property
    def bob_id(self) -> str:
        assert self.bob.frontend_id is not None
        return self.bob.frontend_id

    async def agent(self, agent_id: str) -> GrpcAgent:
        agent = await self.stack.enter_async_context(
            GrpcAgent(self.hub.grpc_target, agent_id, session=agent_id)
        )
        await agent.register(agent_id)
        return agent

    async def alice_says(self, text: str, message_id: str, **fields: Any) -> dict[str, Any]:
        """Alice sends a TEXT; returns it as the broker receives it (pending echo consumed)."""
        await self.alice.send_text(text, message_id=message_id, **fields)
        message = await self.broker_in.next()
        assert message["message_id"] == message_id
        echo = await self.alice.next_chat()
        assert (echo["message_id"], echo["routing_status"]) == (message_id, "pending")
        return message

    async def after_bus_marker(self, frontend: Frontend) -> list[dict[str, Any]]:
        """Sends a SYSTEM notice to `frontend` through server_input_queue, which the server
        handles in order, and returns the chat frames that arrived before it."""
        marker = f"marker-{frontend.frontend_id}"
        await publish_json(
            self.bus,
            SERVER_INPUT_QUEUE,
            {
                "message_type": "SYSTEM",
                "message_id": marker,
                "sender_id": "broker_test",
                "receiver_id": frontend.frontend_id,
                "text_payload": "marker",
                "routing_status": "routed",
            },
        )
        await frontend.next(of_type("SYSTEM", message_id=marker))
        return frontend.non_presence(frontend.take_buffered())

    async def bob_saw_nothing(self) -> None:
        assert self.bob.non_presence(await self.bob.barrier()) == []


@pytest.fixture
async def scene() -> AsyncIterator[Scene]:
    async with AsyncExitStack() as stack:
        hub = await stack.enter_async_context(running_hub(test_settings()))
        broker_in = await stack.enter_async_context(tap(hub.bus, BROKER_INPUT_QUEUE))
        alice = await stack.enter_async_context(await Frontend.registered(hub.ws_url, "Alice"))
        bob = await stack.enter_async_context(await Frontend.registered(hub.ws_url, "Bob"))
        yield Scene(hub, hub.bus, broker_in, alice, bob, stack)


async def assert_routing_error(scene: Scene, message_id: str, code: str) -> dict[str, Any]:
    """The sender sees its TEXT echoed with routing_status error, then an ERROR saying why."""
    echo = await scene.alice.next_chat()
    assert echo["message_type"] == "TEXT"
    assert echo["message_id"] == message_id
    assert echo["routing_status"] == "error"
    assert echo["error_code"] == code
    error = await scene.alice.next_chat()
    assert error["message_type"] == "ERROR"
    assert error["error_code"] == code
    assert error["in_reply_to_message_id"] == message_id
    assert error["receiver_id"] == scene.alice_id
    assert isinstance(error["text_payload"], str)
    assert error["text_payload"]
    assert "_client_id" not in error
    return error


async def test_routed_to_offline_agent_is_agent_offline(scene: Scene) -> None:
    agent = await scene.agent("agent-gone")
    await agent.unregister()
    async with tap(scene.bus, agent_queue("agent-gone")) as agent_in:
        message = await scene.alice_says("anyone?", "m-off")
        await publish_json(scene.bus, SERVER_INPUT_QUEUE, routed(message, "agent-gone"))
        await assert_routing_error(scene, "m-off", "agent_offline")
        await scene.bob_saw_nothing()
        assert scene.alice.non_presence(await scene.alice.barrier()) == []
        assert agent_in.pending() == []


async def test_routed_to_unknown_agent_is_unknown_receiver(scene: Scene) -> None:
    message = await scene.alice_says("hello?", "m-unknown")
    await publish_json(scene.bus, SERVER_INPUT_QUEUE, routed(message, "nobody-by-that-name"))
    await assert_routing_error(scene, "m-unknown", "unknown_receiver")
    await scene.bob_saw_nothing()


@pytest.mark.parametrize("receiver", ["", "server"])
async def test_routed_to_no_one_is_unknown_receiver(scene: Scene, receiver: str) -> None:
    message = await scene.alice_says("hello?", "m-no-one")
    await publish_json(scene.bus, SERVER_INPUT_QUEUE, routed(message, receiver))
    await assert_routing_error(scene, "m-no-one", "unknown_receiver")
    await scene.bob_saw_nothing()


async def test_broker_error_goes_to_the_sender(scene: Scene) -> None:
    message = await scene.alice_says("route me", "m-err")
    await publish_json(scene.bus, SERVER_INPUT_QUEUE, broker_error(message, "no_agent_available"))
    error = await assert_routing_error(scene, "m-err", "no_agent_available")
    assert error["message_id"] == "err-m-err"
    assert error["routing_status"] == "error"
    assert error["text_payload"] == "Could not route: no_agent_available"
    await scene.bob_saw_nothing()
    assert scene.alice.non_presence(await scene.alice.barrier()) == []


@pytest.mark.parametrize("receiver", ["server", "Server", "SERVER"])
async def test_broker_error_for_server_goes_to_its_sender_id(scene: Scene, receiver: str) -> None:
    """The described system's broker addresses errors to "server" and names the frontend as
    sender_id; such an error must reach that frontend."""
    message = await scene.alice_says("route me", "m-srv")
    error_out = {
        "message_type": "ERROR",
        "message_id": "err-srv",
        "sender_id": scene.alice_id,
        "receiver_id": receiver,
        "text_payload": "No agent available",
        "in_reply_to_message_id": message["message_id"],
        "routing_status": "error",
        "error_code": "no_agent_available",
    }
    await publish_json(scene.bus, SERVER_INPUT_QUEUE, error_out)
    error = await assert_routing_error(scene, "m-srv", "no_agent_available")
    assert error["message_id"] == "err-srv"
    assert error["text_payload"] == "No agent available"
    await scene.bob_saw_nothing()


async def test_broker_error_without_code_gets_internal(scene: Scene) -> None:
    message = await scene.alice_says("route me", "m-nocode")
    error_out = broker_error(message, "x")
    del error_out["error_code"]
    await publish_json(scene.bus, SERVER_INPUT_QUEUE, error_out)
    await assert_routing_error(scene, "m-nocode", "internal")


async def test_second_final_answer_is_dropped(scene: Scene) -> None:
    message = await scene.alice_says("route me", "m-twice")
    await publish_json(scene.bus, SERVER_INPUT_QUEUE, broker_error(message, "no_agent_available"))
    await assert_routing_error(scene, "m-twice", "no_agent_available")
    late_reply = {
        "message_type": "REPLY",
        "message_id": "r-late",
        "sender_id": "agent-z",
        "receiver_id": scene.alice_id,
        "text_payload": "too late",
        "in_reply_to_message_id": "m-twice",
        "routing_status": "routed",
    }
    await publish_json(scene.bus, SERVER_INPUT_QUEUE, late_reply)
    assert await scene.after_bus_marker(scene.alice) == []


async def test_broker_error_for_an_agent_goes_to_its_queue(scene: Scene) -> None:
    await scene.agent("agent-err")
    async with tap(scene.bus, agent_queue("agent-err")) as agent_in:
        reply = {
            "message_type": "REPLY",
            "message_id": "r-bad",
            "sender_id": "agent-err",
            "receiver_id": "agent-someone-else",
            "text_payload": "hi",
        }
        await publish_json(scene.bus, SERVER_INPUT_QUEUE, broker_error(reply, "unknown_receiver"))
        error = await agent_in.next()
        assert error["message_type"] == "ERROR"
        assert error["error_code"] == "unknown_receiver"
        assert error["in_reply_to_message_id"] == "r-bad"
        assert error["receiver_id"] == "agent-err"
    await scene.bob_saw_nothing()
    assert scene.alice.non_presence(await scene.alice.barrier()) == []


async def test_reply_reaches_only_its_frontend(scene: Scene) -> None:
    reply = {
        "message_type": "REPLY",
        "message_id": "r-bob",
        "sender_id": "agent-z",
        "receiver_id": scene.bob_id,
        "text_payload": "for Bob only",
        "in_reply_to_message_id": "m-bob",
        "routing_status": "routed",
    }
    await publish_json(scene.bus, SERVER_INPUT_QUEUE, reply)
    got = await scene.bob.next_chat()
    assert (got["message_type"], got["message_id"], got["text_payload"]) == (
        "REPLY",
        "r-bob",
        "for Bob only",
    )
    assert scene.alice.non_presence(await scene.alice.barrier()) == []
    assert scene.bob.non_presence(await scene.bob.barrier()) == []


async def test_reply_chunks_only_for_frontends_that_asked_for_streams(scene: Scene) -> None:
    streamer = await scene.stack.enter_async_context(
        await Frontend.registered(scene.hub.ws_url, "Streamer", capabilities={"stream": True})
    )
    for frontend in (streamer, scene.bob):
        chunk = {
            "message_type": "REPLY_CHUNK",
            "message_id": f"r-{frontend.frontend_id}",
            "sender_id": "agent-z",
            "receiver_id": frontend.frontend_id,
            "in_reply_to_message_id": f"m-{frontend.frontend_id}",
            "seq": 0,
            "text_delta": "Hel",
            "routing_status": "routed",
        }
        await publish_json(scene.bus, SERVER_INPUT_QUEUE, chunk)
        await publish_json(scene.bus, SERVER_INPUT_QUEUE, {**chunk, "seq": 1, "text_delta": "lo"})
        await publish_json(
            scene.bus,
            SERVER_INPUT_QUEUE,
            {**chunk, "message_type": "REPLY", "text_payload": "Hello", "seq": None},
        )
    first = await streamer.next_chat()
    assert (first["message_type"], first["seq"], first["text_delta"]) == ("REPLY_CHUNK", 0, "Hel")
    second = await streamer.next_chat()
    assert (second["message_type"], second["seq"], second["text_delta"]) == ("REPLY_CHUNK", 1, "lo")
    final = await streamer.next_chat()
    assert (final["message_type"], final["text_payload"]) == ("REPLY", "Hello")
    assert final["message_id"] == first["message_id"]
    # Bob registered without the stream capability: the whole reply only.
    only = await scene.bob.next_chat()
    assert (only["message_type"], only["text_payload"]) == ("REPLY", "Hello")
    await scene.bob_saw_nothing()


async def test_reply_waits_for_a_frontend_that_resumes(scene: Scene) -> None:
    registration = scene.bob.registration
    assert registration is not None
    await scene.bob.close()
    # Frames written before the server noticed the close are lost with the socket; what is
    # kept for a resume is what comes after.
    session = scene.hub.hub.sessions.get(scene.bob_id)
    assert session is not None
    await wait_until(lambda: session.link is None, what="the server to notice the close")
    await publish_json(
        scene.bus,
        SERVER_INPUT_QUEUE,
        {
            "message_type": "REPLY",
            "message_id": "r-later",
            "sender_id": "agent-z",
            "receiver_id": scene.bob_id,
            "text_payload": "while you were away",
            "routing_status": "routed",
        },
    )
    async with await Frontend.connect(scene.hub.ws_url) as back:
        await back.send(
            {
                "message_type": "REGISTER_FRONTEND",
                "frontend_name": "Bob again",
                "frontend_id": scene.bob_id,
                "resume_token": registration["resume_token"],
            }
        )
        response = await back.next()
        assert response["message_type"] == "REGISTER_FRONTEND_RESPONSE"
        assert response["frontend_id"] == scene.bob_id
        status = await back.next()
        assert (status["message_type"], status["is_full_update"]) == ("AGENT_STATUS_UPDATE", True)
        kept = await back.next_chat()
        assert (kept["message_type"], kept["message_id"]) == ("REPLY", "r-later")


async def test_frontend_cannot_address_another_frontend(scene: Scene) -> None:
    await scene.alice.send_text("psst", message_id="m-dm", receiver_id=scene.bob_id)
    error = await scene.alice.next_chat()
    assert error["message_type"] == "ERROR"
    assert error["error_code"] == "unknown_receiver"
    assert error["in_reply_to_message_id"] == "m-dm"
    await scene.bob_saw_nothing()
    assert scene.broker_in.pending() == []


async def test_text_naming_an_agent_reaches_the_broker_with_that_receiver(scene: Scene) -> None:
    await scene.alice.send_text("direct", message_id="m-direct", receiver_id="agent-q")
    message = await scene.broker_in.next()
    assert message["receiver_id"] == "agent-q"
    echo = await scene.alice.next(of_type("TEXT", message_id="m-direct"))
    assert echo["routing_status"] == "pending"
