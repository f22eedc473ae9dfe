"""What the server reads from and announces on the bus besides chat (PROTOCOL §4): server
advertisements, the metadata queue's notices, periodic full lists, and garbage that must not
stop a consumer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass

import httpx
import pytest

from agentcomm.bus.base import Bus
from agentcomm.server.testing import HubEndpoints, running_hub, test_settings
from tests.support.agent import GrpcAgent
from tests.support.bus import SERVER_INPUT_QUEUE, publish_json, tap
from tests.support.frontend import PRESENCE, Frontend, of_type
from tests.support.waiting import DEFAULT_TIMEOUT, wait_until

ADVERTISEMENTS = "server_advertisement_queue"
METADATA = "agent_metadata_queue"


@dataclass
class Scene:
    hub: HubEndpoints
    bus: Bus
    frontend: Frontend
    stack: AsyncExitStack


@pytest.fixture
async def scene() -> AsyncIterator[Scene]:
    async with AsyncExitStack() as stack:
        hub = await stack.enter_async_context(running_hub(test_settings()))
        frontend = await stack.enter_async_context(await Frontend.registered(hub.ws_url))
        yield Scene(hub, hub.bus, frontend, stack)


async def test_server_advertises_itself_on_start_and_stop() -> None:
    settings = test_settings()
    async with running_hub(settings) as hub, tap(hub.bus, ADVERTISEMENTS) as adverts:
        available = await adverts.next()
        assert available["message_type"] == "SERVER_AVAILABLE"
        assert available["server_id"] == hub.hub.server_id
        assert available["websocket_url"].endswith("/ws")
        assert available["websocket_url"].startswith("ws://")
        assert available["grpc_address"] == f"127.0.0.1:{hub.server.grpc_port}"
        assert available["timestamp"]


async def test_periodic_full_status_reaches_every_frontend() -> None:
    async with (
        running_hub(test_settings(periodic_status_interval=0.2)) as hub,
        await Frontend.registered(hub.ws_url) as frontend,
        GrpcAgent(hub.grpc_target, "periodic") as agent,
    ):
        await agent.register()
        await frontend.next(of_type(PRESENCE, is_full_update=False))
        refresh = await frontend.next(of_type(PRESENCE, is_full_update=True), timeout=3)
        assert [a["agent_id"] for a in refresh["agents"]] == ["periodic"]


async def test_register_broker_notice_on_the_metadata_queue(scene: Scene) -> None:
    await publish_json(
        scene.bus,
        METADATA,
        {"message_type": "REGISTER_BROKER", "broker_id": "broker_seed", "broker_name": "Seed"},
    )
    brokers_registry = scene.hub.hub.brokers
    await wait_until(lambda: brokers_registry.get("broker_seed") is not None, what="the notice")
    async with httpx.AsyncClient(base_url=scene.hub.http_url, timeout=DEFAULT_TIMEOUT) as http:
        brokers = (await http.get("/api/brokers")).json()
        assert [(b["broker_id"], b["broker_name"], b["registered_via"]) for b in brokers] == [
            ("broker_seed", "Seed", "bus")
        ]


async def test_client_disconnected_notice_takes_an_agent_offline(scene: Scene) -> None:
    agent = await scene.stack.enter_async_context(GrpcAgent(scene.hub.grpc_target, "noticed"))
    await agent.register()
    await scene.frontend.next(of_type(PRESENCE, is_full_update=False))
    await publish_json(
        scene.bus,
        METADATA,
        {"message_type": "CLIENT_DISCONNECTED", "client_id": "noticed", "client_type": "agent"},
    )
    delta = await scene.frontend.next(of_type(PRESENCE, is_full_update=False))
    assert [(a["agent_id"], a["is_online"]) for a in delta["agents"]] == [("noticed", False)]


@pytest.mark.parametrize(
    "garbage",
    [
        b"not json",
        b"[1, 2]",
        b'{"message_type": "NOPE"}',
        b'{"message_type": "REGISTER_BROKER"}',
        b'{"message_type": "CLIENT_DISCONNECTED", "client_id": ""}',
        b'{"message_type": "CLIENT_DISCONNECTED", "client_id": "ghost", "client_type": "agent"}',
        b'{"message_type": "TEXT"}',
    ],
)
async def test_garbage_on_the_metadata_queue_does_not_stop_its_consumer(
    scene: Scene, garbage: bytes
) -> None:
    await scene.bus.publish(METADATA, garbage, timeout=DEFAULT_TIMEOUT)
    agent = await scene.stack.enter_async_context(GrpcAgent(scene.hub.grpc_target, "after"))
    await agent.register()
    await scene.frontend.next(of_type(PRESENCE, is_full_update=False))
    await publish_json(
        scene.bus,
        METADATA,
        {"message_type": "CLIENT_DISCONNECTED", "client_id": "after", "client_type": "agent"},
    )
    delta = await scene.frontend.next(of_type(PRESENCE, is_full_update=False))
    assert [(a["agent_id"], a["is_online"]) for a in delta["agents"]] == [("after", False)]


@pytest.mark.parametrize(
    "garbage",
    [
        b"not json",
        b"\xff\xfe",
        b"null",
        b'{"message_type": "NOPE"}',
        b'{"message_type": "REPLY", "message_id": "bad id"}',
        b'{"message_type": "REPLY", "routing_status": "teleported"}',
    ],
)
async def test_garbage_on_server_input_does_not_stop_its_consumer(
    scene: Scene, garbage: bytes
) -> None:
    await scene.bus.publish(SERVER_INPUT_QUEUE, garbage, timeout=DEFAULT_TIMEOUT)
    await publish_json(
        scene.bus,
        SERVER_INPUT_QUEUE,
        {
            "message_type": "REPLY",
            "message_id": "after-garbage",
            "receiver_id": scene.frontend.frontend_id,
            "text_payload": "still flowing",
            "routing_status": "routed",
        },
    )
    reply = await scene.frontend.next_chat()
    assert (reply["message_type"], reply["message_id"]) == ("REPLY", "after-garbage")
    assert scene.frontend.non_presence(await scene.frontend.barrier()) == []
