"""Two hubs on one bus are one system: presence shared, any frontend to any agent, operator
commands on any hub, one agent id in the whole cluster.

Both hubs run in this process on free ports; on RabbitMQ each has its own connection to one
vhost, on the in-process bus each its own handle on one bus (`BusShare`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest

from agentcomm.broker.service import ReferenceBroker
from agentcomm.bus.base import Bus
from agentcomm.bus.factory import create_bus
from agentcomm.bus.memory import InMemoryBus
from agentcomm.config import Settings
from agentcomm.generated import agent_registration_service_pb2 as reg_pb
from agentcomm.sdk.agent import Agent
from agentcomm.sdk.demo_agents import build_demo_agent
from agentcomm.server.testing import HubEndpoints, running_hub, test_settings
from tests.support.agent import GrpcAgent
from tests.support.frontend import Frontend
from tests.support.shared_bus import BusShare
from tests.support.waiting import wait_until

WAIT = 15.0


@dataclass
class Cluster:
    a: HubEndpoints
    b: HubEndpoints
    bus_name: str

    def agent_settings(self, hub: HubEndpoints) -> Settings:
        return hub.settings.model_copy(
            update={"grpc_host": "127.0.0.1", "grpc_port": hub.server.grpc_port}
        )


def _settings(bus_name: str, rabbitmq: dict[str, str]) -> Settings:
    overrides: dict[str, Any] = {"agent_timeout": 6.0, "stream_grace": 0.5}
    if bus_name == "rabbitmq":
        overrides.update(rabbitmq)
    return test_settings(**overrides)


@asynccontextmanager
async def two_hubs(bus_name: str, rabbitmq: dict[str, str]) -> AsyncIterator[Cluster]:
    settings = _settings(bus_name, rabbitmq)
    shared = InMemoryBus()

    def bus() -> Bus:
        return BusShare(shared) if bus_name == "memory" else create_bus(settings)

    async with (
        running_hub(settings, bus()) as a,
        running_hub(settings, bus()) as b,
    ):
        yield Cluster(a, b, bus_name)
    await shared.close()


@pytest.fixture(params=["memory", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
def bus_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name == "rabbitmq":
        request.getfixturevalue("rabbitmq_available")
    return name


@pytest.fixture
def rabbitmq(bus_name: str, request: pytest.FixtureRequest) -> dict[str, str]:
    if bus_name != "rabbitmq":
        return {}
    env: dict[str, str] = request.getfixturevalue("rabbitmq_env")
    return env


@pytest.fixture
async def cluster(bus_name: str, rabbitmq: dict[str, str]) -> AsyncIterator[Cluster]:
    async with two_hubs(bus_name, rabbitmq) as hubs:
        yield hubs


async def online_at(frontend: Frontend, agent_id: str) -> None:
    """Waits until the frontend's presence shows `agent_id` online."""

    def shows_online(frame: dict[str, Any]) -> bool:
        return frame.get("message_type") == "AGENT_STATUS_UPDATE" and any(
            agent["agent_id"] == agent_id and agent["is_online"] for agent in frame["agents"]
        )

    await frontend.send({"message_type": "REQUEST_AGENT_STATUS"})
    await frontend.next(shows_online, timeout=WAIT)


@asynccontextmanager
async def echo_on(
    cluster: Cluster, hub: HubEndpoints, agent_id: str = "echo"
) -> AsyncIterator[Agent]:
    agent = build_demo_agent(
        "echo", cluster.agent_settings(hub), agent_id=agent_id, transport="grpc"
    )
    await asyncio.wait_for(agent.start(), WAIT)
    try:
        yield agent
    finally:
        await asyncio.wait_for(agent.stop(), WAIT)


@asynccontextmanager
async def broker_at(hub: HubEndpoints) -> AsyncIterator[ReferenceBroker]:
    broker = ReferenceBroker(hub.bus, hub.grpc_target, start_timeout=WAIT)
    await asyncio.wait_for(broker.start(), WAIT)
    try:
        yield broker
    finally:
        await asyncio.wait_for(broker.stop(), WAIT)


async def broker_sees(broker: ReferenceBroker, agent_id: str) -> None:
    async with asyncio.timeout(WAIT):
        await broker.wait_for_presence(
            lambda table: agent_id in table.agents and table.agents[agent_id].is_online
        )


async def test_an_agent_on_one_hub_is_online_at_a_frontend_and_broker_of_the_other(
    cluster: Cluster,
) -> None:
    async with (
        await Frontend.registered(cluster.a.ws_url) as frontend,
        echo_on(cluster, cluster.b),
        broker_at(cluster.a) as broker,
    ):
        await online_at(frontend, "echo")
        await broker_sees(broker, "echo")


async def test_a_frontend_on_one_hub_is_answered_by_an_agent_on_the_other(
    cluster: Cluster,
) -> None:
    async with (
        broker_at(cluster.b) as broker,
        await Frontend.registered(cluster.a.ws_url) as frontend,
        echo_on(cluster, cluster.b),
    ):
        await online_at(frontend, "echo")
        await broker_sees(broker, "echo")
        sent = await frontend.send_text("across hubs", receiver_id="echo", message_id="across-1")
        statuses = []
        while True:
            frame = await frontend.next(
                lambda f: (
                    f.get("message_id") == sent["message_id"]
                    or f.get("in_reply_to_message_id") == sent["message_id"]
                ),
                timeout=WAIT,
            )
            if frame["message_type"] == "TEXT":
                statuses.append(frame["routing_status"])
                continue
            assert frame["message_type"] == "REPLY", frame
            assert "across hubs" in frame["text_payload"]
            break
        assert statuses[0] == "pending"
        assert "error" not in statuses


async def test_an_agent_id_is_one_agent_in_the_whole_cluster(cluster: Cluster) -> None:
    async with (
        GrpcAgent(cluster.a.grpc_target, "solo", session="first") as first,
        GrpcAgent(cluster.b.grpc_target, "solo", session="second") as second,
    ):
        await first.register()
        await wait_until(lambda: cluster.b.hub.cluster.is_online("solo"), timeout=WAIT)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await second.register()
        assert refused.value.code() is grpc.StatusCode.ALREADY_EXISTS


async def test_a_command_on_one_hub_reaches_an_agent_on_the_other(cluster: Cluster) -> None:
    async with GrpcAgent(cluster.b.grpc_target, "worker", session="w1") as worker:
        await worker.register()

        async def answer(command: reg_pb.Command) -> reg_pb.CommandResult:
            return reg_pb.CommandResult(
                command_id=command.command_id,
                agent_id="worker",
                success=True,
                output="done " + command.type,
            )

        worker.answer_commands(answer)
        await wait_until(lambda: cluster.a.hub.cluster.is_online("worker"), timeout=WAIT)
        async with httpx.AsyncClient(base_url=cluster.a.http_url, timeout=WAIT) as client:
            response = await client.post(
                "/api/agents/worker/commands", json={"type": "status", "timeout_s": 10}
            )
            assert response.status_code == 200, response.text
            assert response.json()["output"] == "done status"
            missing = await client.post("/api/agents/nobody/commands", json={"type": "status"})
            assert missing.status_code == 404


async def test_each_hub_lists_the_cluster_and_a_stopped_hub_takes_its_agents_along(
    bus_name: str, rabbitmq: dict[str, str]
) -> None:
    settings = _settings(bus_name, rabbitmq)
    shared = InMemoryBus()
    async with AsyncExitStack() as stack:
        bus_a = BusShare(shared) if bus_name == "memory" else create_bus(settings)
        a = await stack.enter_async_context(running_hub(settings, bus_a))
        async with await Frontend.registered(a.ws_url) as frontend:
            bus_b = BusShare(shared) if bus_name == "memory" else create_bus(settings)
            async with running_hub(settings, bus_b) as b:
                cluster = Cluster(a, b, bus_name)
                async with echo_on(cluster, b, "leaver"):
                    await online_at(frontend, "leaver")
                    async with httpx.AsyncClient(base_url=a.http_url, timeout=WAIT) as client:
                        hubs = (await client.get("/api/hubs")).json()
                    assert {hub["server_id"] for hub in hubs} == {
                        a.hub.server_id,
                        b.hub.server_id,
                    }
            # Hub b stopped: its agent is gone from a's frontends at once, not after a lease.
            await frontend.next(
                lambda f: (
                    f.get("message_type") == "AGENT_STATUS_UPDATE"
                    and any(
                        agent["agent_id"] == "leaver" and not agent["is_online"]
                        for agent in f["agents"]
                    )
                ),
                timeout=3.0,
            )
            await wait_until(lambda: a.hub.membership.hub_count() == 1, timeout=WAIT)
    await shared.close()
