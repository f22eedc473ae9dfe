"""The five communication flows of the seed's README, each against a real hub on free ports,
with real WebSocket and gRPC clients; the chat flow on both buses."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import datetime
from typing import Any

import httpx
import pytest

from agentcomm.server.testing import HubEndpoints, running_hub, test_settings
from tests.support.agent import GrpcAgent, GrpcBroker
from tests.support.bus import (
    BROKER_INPUT_QUEUE,
    SERVER_INPUT_QUEUE,
    agent_queue,
    publish_json,
    routed,
    side_bus,
    tap,
)
from tests.support.frontend import PRESENCE, Frontend, of_type
from tests.support.waiting import wait_until

FRONTEND_ID = re.compile(r"^web_[0-9a-f]{32}$")
INTERNAL_KEYS = {"_client_id", "_server_id", "_hops"}


def parse_iso(value: str) -> datetime:
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    assert moment.tzinfo is not None, value
    return moment


def assert_agent_info(info: dict[str, Any], agent_id: str, *, online: bool, **fields: Any) -> None:
    assert info["agent_id"] == agent_id
    assert info["is_online"] is online
    assert info["status"] == ("online" if online else "offline")
    assert isinstance(info["agent_name"], str)
    assert isinstance(info["capabilities"], dict)
    parse_iso(info["last_seen"])
    for key, value in fields.items():
        assert info[key] == value, (key, info)


@pytest.fixture
async def hub() -> AsyncIterator[HubEndpoints]:
    async with running_hub(test_settings(stream_grace=0.3)) as endpoints:
        yield endpoints


# -- flow 1 ------------------------------------------------------------------------------------


async def test_flow1_frontend_registration(hub: HubEndpoints) -> None:
    async with GrpcAgent(hub.grpc_target, "agent-one") as agent:
        await agent.register("Agent One", capabilities={"lang": "en"})
        async with await Frontend.connect(hub.ws_url) as frontend:
            await frontend.send(
                {"message_type": "REGISTER_FRONTEND", "frontend_name": "Alice", "message_id": "r1"}
            )
            response = await frontend.next()
            assert response["message_type"] == "REGISTER_FRONTEND_RESPONSE"
            assert response["status"] == "success"
            assert FRONTEND_ID.match(response["frontend_id"]), response
            assert response["frontend_name"] == "Alice"
            assert isinstance(response["message"], str)
            assert response["message"]
            assert isinstance(response["resume_token"], str)
            assert response["resume_token"]

            status = await frontend.next()
            assert status["message_type"] == PRESENCE
            assert status["is_full_update"] is True
            assert len(status["agents"]) == 1
            assert_agent_info(
                status["agents"][0],
                "agent-one",
                online=True,
                agent_name="Agent One",
                capabilities={"lang": "en"},
            )
            # Asking again gives the same full list to this socket only.
            assert frontend.non_presence(await frontend.barrier()) == []


# -- flow 2 ------------------------------------------------------------------------------------


async def test_flow2_agent_registration_pushes_delta_to_frontends_and_status_streams(
    hub: HubEndpoints,
) -> None:
    async with AsyncExitStack() as stack:
        broker = await stack.enter_async_context(GrpcBroker(hub.grpc_target))
        stream = broker.subscribe()
        full = await stream.next()
        assert full.is_full_update is True
        assert list(full.agents) == []
        frontend = await stack.enter_async_context(await Frontend.registered(hub.ws_url))
        assert frontend.first_status is not None
        assert frontend.first_status["agents"] == []

        agent = await stack.enter_async_context(GrpcAgent(hub.grpc_target, "agent-two"))
        response = await agent.register("Agent Two", capabilities={"skill": "math"})
        assert response.success is True
        assert response.server_assigned_id == "agent-two"

        delta = await frontend.next(of_type(PRESENCE))
        assert delta["is_full_update"] is False
        assert len(delta["agents"]) == 1
        assert_agent_info(
            delta["agents"][0],
            "agent-two",
            online=True,
            agent_name="Agent Two",
            capabilities={"skill": "math"},
        )

        update = await stream.next()
        assert update.is_full_update is False
        assert [info.agent_id for info in update.agents] == ["agent-two"]
        info = update.agents[0]
        assert info.agent_name == "Agent Two"
        assert info.is_online is True
        assert info.status == "online"
        assert dict(info.capabilities) == {"skill": "math"}
        parse_iso(info.last_seen)


async def test_flow2_agent_without_id_gets_one_assigned(hub: HubEndpoints) -> None:
    async with GrpcAgent(hub.grpc_target, "") as agent:
        response = await agent.register("Nameless")
        assert response.success is True
        assert re.match(r"^agent_[0-9a-f]+$", response.server_assigned_id), response
        assert hub.hub.registry.is_online(response.server_assigned_id)


# -- flow 3 ------------------------------------------------------------------------------------


async def test_flow3_broker_registration_and_status_subscription(hub: HubEndpoints) -> None:
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(GrpcAgent(hub.grpc_target, "agent-a"))
        await first.register("A")
        broker = await stack.enter_async_context(GrpcBroker(hub.grpc_target, "broker_flow3"))
        registration = await broker.register("Flow 3 broker")
        assert registration.success is True
        assert "broker_flow3" in registration.message

        stream = broker.subscribe()
        full = await stream.next()
        assert full.is_full_update is True
        assert [(info.agent_id, info.is_online) for info in full.agents] == [("agent-a", True)]

        second = await stack.enter_async_context(GrpcAgent(hub.grpc_target, "agent-b"))
        await second.register("B")
        delta = await stream.next()
        assert delta.is_full_update is False
        assert [(info.agent_id, info.is_online) for info in delta.agents] == [("agent-b", True)]

        await first.unregister()
        delta = await stream.next()
        assert delta.is_full_update is False
        assert [(info.agent_id, info.is_online, info.status) for info in delta.agents] == [
            ("agent-a", False, "offline")
        ]

        snapshot = await broker.get_status()
        assert snapshot.is_full_update is True
        assert {(info.agent_id, info.is_online) for info in snapshot.agents} == {
            ("agent-a", False),
            ("agent-b", True),
        }
        async with httpx.AsyncClient(base_url=hub.http_url, timeout=5) as http:
            brokers = (await http.get("/api/brokers")).json()
        assert [(b["broker_id"], b["broker_name"], b["is_online"]) for b in brokers] == [
            ("broker_flow3", "Flow 3 broker", True)
        ]


# -- flow 4 ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bus_kind", ["memory", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)]
)
async def test_flow4_chat_turn(bus_kind: str, request: pytest.FixtureRequest) -> None:
    overrides = request.getfixturevalue("rabbitmq_env") if bus_kind == "rabbitmq" else {}
    settings = test_settings(**overrides)
    async with AsyncExitStack() as stack:
        h = await stack.enter_async_context(running_hub(settings))
        bus = await stack.enter_async_context(side_bus(settings, h.bus))
        agent = await stack.enter_async_context(GrpcAgent(h.grpc_target, "agent-x", session="x1"))
        await agent.register("Agent X")
        broker_in = await stack.enter_async_context(tap(bus, BROKER_INPUT_QUEUE))
        agent_in = await stack.enter_async_context(tap(bus, agent_queue("agent-x")))
        alice = await stack.enter_async_context(await Frontend.registered(h.ws_url, "Alice"))
        bob = await stack.enter_async_context(await Frontend.registered(h.ws_url, "Bob"))
        assert alice.frontend_id is not None

        # Frontend → server → broker_input_queue, with the sender set by the server.
        await alice.send_text("Hi!", message_id="m-1", conversation_id="c-1", sender_id="forged")
        to_broker = await broker_in.next()
        assert to_broker["message_type"] == "TEXT"
        assert to_broker["message_id"] == "m-1"
        assert to_broker["text_payload"] == "Hi!"
        assert to_broker["conversation_id"] == "c-1"
        assert to_broker["sender_id"] == alice.frontend_id
        assert to_broker["_client_id"] == alice.frontend_id
        assert to_broker["_server_id"] == h.hub.server_id
        assert to_broker["routing_status"] == "pending"
        assert "receiver_id" not in to_broker
        parse_iso(to_broker["send_timestamp"])

        pending = await alice.next_chat()
        assert (pending["message_type"], pending["message_id"], pending["routing_status"]) == (
            "TEXT",
            "m-1",
            "pending",
        )
        assert pending["text_payload"] == "Hi!"
        assert pending["sender_id"] == alice.frontend_id
        assert not INTERNAL_KEYS & pending.keys(), pending

        # The test plays the broker: the message is routed to agent-x.
        await publish_json(bus, SERVER_INPUT_QUEUE, routed(to_broker, "agent-x"))
        for_agent = await agent_in.next()
        assert for_agent["message_type"] == "TEXT"
        assert for_agent["message_id"] == "m-1"
        assert for_agent["receiver_id"] == "agent-x"
        assert for_agent["sender_id"] == alice.frontend_id
        assert for_agent["text_payload"] == "Hi!"
        assert for_agent["conversation_id"] == "c-1"
        # Internal fields stay on the server's side: agents never see them (PROTOCOL §0).
        assert not INTERNAL_KEYS & for_agent.keys(), for_agent

        echo_routed = await alice.next_chat()
        assert (echo_routed["message_id"], echo_routed["routing_status"]) == ("m-1", "routed")
        assert echo_routed["receiver_id"] == "agent-x"
        echo_delivered = await alice.next_chat()
        assert (echo_delivered["message_id"], echo_delivered["routing_status"]) == (
            "m-1",
            "delivered",
        )
        assert echo_delivered["message_type"] == "TEXT"
        assert not INTERNAL_KEYS & echo_delivered.keys(), echo_delivered

        # The test plays the agent: its REPLY goes to broker_input_queue ...
        reply = {
            "message_type": "REPLY",
            "message_id": "r-1",
            "sender_id": "agent-x",
            "receiver_id": alice.frontend_id,
            "text_payload": "Hello, Alice",
            "in_reply_to_message_id": "m-1",
            "conversation_id": "c-1",
            "routing_status": "pending",
            "_client_id": for_agent.get("_client_id"),
            "_server_id": for_agent.get("_server_id"),
        }
        await publish_json(bus, BROKER_INPUT_QUEUE, reply)
        reply_at_broker = await broker_in.next()
        assert reply_at_broker["message_id"] == "r-1"
        # ... and the broker marks it routed to the frontend.
        await publish_json(bus, SERVER_INPUT_QUEUE, routed(reply_at_broker, alice.frontend_id))

        answer = await alice.next_chat()
        assert answer["message_type"] == "REPLY"
        assert answer["message_id"] == "r-1"
        assert answer["text_payload"] == "Hello, Alice"
        assert answer["in_reply_to_message_id"] == "m-1"
        assert answer["sender_id"] == "agent-x"
        assert answer["receiver_id"] == alice.frontend_id
        assert answer["conversation_id"] == "c-1"
        assert not INTERNAL_KEYS & answer.keys(), answer

        # Nothing of it reached the other frontend, and nothing more reached the sender.
        assert bob.non_presence(await bob.barrier()) == []
        assert alice.non_presence(await alice.barrier()) == []
        assert broker_in.pending() == []
        assert agent_in.pending() == []


# -- flow 5 ------------------------------------------------------------------------------------


async def test_flow5_unregister_pushes_offline_delta(hub: HubEndpoints) -> None:
    async with AsyncExitStack() as stack:
        agent = await stack.enter_async_context(
            GrpcAgent(hub.grpc_target, "agent-bye", session="b")
        )
        await agent.register("Bye")
        broker = await stack.enter_async_context(GrpcBroker(hub.grpc_target))
        stream = broker.subscribe()
        assert (await stream.next()).is_full_update is True
        frontend = await stack.enter_async_context(await Frontend.registered(hub.ws_url))

        response = await agent.unregister()
        assert response.success is True

        delta = await frontend.next(of_type(PRESENCE))
        assert delta["is_full_update"] is False
        assert len(delta["agents"]) == 1
        assert_agent_info(delta["agents"][0], "agent-bye", online=False)
        update = await stream.next()
        assert update.is_full_update is False
        assert [(i.agent_id, i.is_online, i.status) for i in update.agents] == [
            ("agent-bye", False, "offline")
        ]
        # Exactly one delta for the one transition.
        assert frontend.take_buffered() == []


async def test_flow5_command_stream_loss_pushes_offline_delta(hub: HubEndpoints) -> None:
    async with AsyncExitStack() as stack:
        broker = await stack.enter_async_context(GrpcBroker(hub.grpc_target))
        stream = broker.subscribe()
        assert (await stream.next()).is_full_update is True
        frontend = await stack.enter_async_context(await Frontend.registered(hub.ws_url))

        agent = GrpcAgent(hub.grpc_target, "agent-lost", session="lost")
        await agent.register("Lost")
        agent.open_commands()
        online = await frontend.next(of_type(PRESENCE))
        assert_agent_info(online["agents"][0], "agent-lost", online=True)
        assert (await stream.next()).agents[0].is_online is True
        record = hub.hub.registry.get("agent-lost")
        assert record is not None
        await wait_until(lambda: record.open_streams == 1, what="the command stream to open")

        # The agent process dies: its connection, and with it the stream, is gone.
        await agent.close()

        offline = await frontend.next(of_type(PRESENCE), timeout=5)
        assert offline["is_full_update"] is False
        assert_agent_info(offline["agents"][0], "agent-lost", online=False)
        update = await stream.next()
        assert [(i.agent_id, i.is_online) for i in update.agents] == [("agent-lost", False)]


async def test_flow5_stream_reopened_within_grace_stays_online() -> None:
    async with running_hub(test_settings(stream_grace=60.0)) as hub, AsyncExitStack() as stack:
        agent = await stack.enter_async_context(GrpcAgent(hub.grpc_target, "agent-flaky"))
        await agent.register("Flaky")
        agent.open_commands()
        record = hub.hub.registry.get("agent-flaky")
        assert record is not None
        await wait_until(lambda: record.open_streams == 1, what="the command stream to open")
        await agent.close_streams()
        await wait_until(lambda: record.stream_lost_at is not None, what="the stream loss")
        agent.open_commands()
        await wait_until(lambda: record.open_streams == 1, what="the stream to reopen")
        assert record.stream_lost_at is None
        assert hub.hub.registry.is_online("agent-flaky")


async def test_full_agent_list_larger_than_max_message_bytes_still_reaches_brokers() -> None:
    """MAX_MESSAGE_BYTES limits what clients send; the full list grows with the number of
    agents and must reach a subscribing broker whatever its size."""
    async with running_hub(test_settings(max_message_bytes=1024)) as hub, AsyncExitStack() as stack:
        agent = await stack.enter_async_context(GrpcAgent(hub.grpc_target, "agent-0"))
        for index in range(40):
            agent.agent_id = f"agent-{index:02d}"
            await agent.register(capabilities={"skill": "x" * 40})
        broker = await stack.enter_async_context(GrpcBroker(hub.grpc_target))
        full = await broker.subscribe().next()
        assert full.is_full_update is True
        assert len(full.agents) == 40
        assert full.ByteSize() > 2 * 1024
        assert len((await broker.get_status()).agents) == 40


async def test_flow4_chat_turn_with_the_agent_on_grpc(hub: HubEndpoints) -> None:
    """The same turn for an agent that takes its work over gRPC (ReceiveMessages / AckMessage /
    SendMessage) instead of consuming its bus queue."""
    async with AsyncExitStack() as stack:
        agent = await stack.enter_async_context(GrpcAgent(hub.grpc_target, "agent-g", session="g"))
        await agent.register("Agent G")
        inbox = agent.open_messages(prefetch=4)
        await wait_until(lambda: hub.hub.inboxes.get("agent-g") is not None, what="the inbox")
        broker_in = await stack.enter_async_context(tap(hub.bus, BROKER_INPUT_QUEUE))
        alice = await stack.enter_async_context(await Frontend.registered(hub.ws_url, "Alice"))

        await alice.send_text("Hi G", message_id="mg-1")
        to_broker = await broker_in.next()
        await publish_json(hub.bus, SERVER_INPUT_QUEUE, routed(to_broker, "agent-g"))
        work = await inbox.next()
        assert (work.agent_id, work.message_id) == ("agent-g", "mg-1")
        envelope = json.loads(work.envelope_json)
        assert (envelope["message_type"], envelope["text_payload"]) == ("TEXT", "Hi G")
        assert envelope["sender_id"] == alice.frontend_id
        assert (await agent.ack("mg-1")).acknowledged is True

        sent = await agent.send_message(
            json.dumps(
                {
                    "message_type": "REPLY",
                    "message_id": "rg-1",
                    "sender_id": "someone-else",
                    "receiver_id": alice.frontend_id,
                    "in_reply_to_message_id": "mg-1",
                    "text_payload": "Hello from G",
                }
            )
        )
        assert (sent.accepted, sent.message_id) == (True, "rg-1")
        reply = await broker_in.next()
        assert (reply["sender_id"], reply["routing_status"]) == ("agent-g", "pending")
        await publish_json(hub.bus, SERVER_INPUT_QUEUE, routed(reply, alice.frontend_id))
        statuses = [(await alice.next_chat())["routing_status"] for _ in range(3)]
        assert statuses == ["pending", "routed", "delivered"]
        answer = await alice.next_chat()
        assert (answer["message_type"], answer["text_payload"]) == ("REPLY", "Hello from G")


async def test_unacknowledged_work_comes_back_when_the_agent_reconnects(hub: HubEndpoints) -> None:
    async with AsyncExitStack() as stack:
        agent = await stack.enter_async_context(GrpcAgent(hub.grpc_target, "agent-r", session="r"))
        await agent.register("Agent R")
        inbox = agent.open_messages()
        await wait_until(lambda: hub.hub.inboxes.get("agent-r") is not None, what="the inbox")
        message = {
            "message_type": "TEXT",
            "message_id": "mr-1",
            "sender_id": "web_" + "0" * 32,
            "receiver_id": "agent-r",
            "text_payload": "do it",
            "routing_status": "routed",
        }
        await publish_json(hub.bus, SERVER_INPUT_QUEUE, message)
        first = await inbox.next()
        assert first.message_id == "mr-1"
        # The agent dies before acknowledging: the message goes back to its queue ...
        await agent.close_streams()
        await wait_until(lambda: hub.hub.inboxes.get("agent-r") is None, what="the inbox to close")
        # ... and comes again on its next stream.
        again = agent.open_messages()
        second = await again.next()
        assert second.message_id == "mr-1"
        assert json.loads(second.envelope_json)["text_payload"] == "do it"
        assert (await agent.ack("mr-1")).acknowledged is True
