"""RegisterAgent and the agent's transport: the server says which bus it runs, and refuses an
agent whose work would wait where it never reads it, before listing it anywhere; an agent whose
own bus turns out to have no queue for it stops and unregisters."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest

from agentcomm.bus.memory import InMemoryBus
from agentcomm.generated import agent_registration_service_pb2 as reg_pb
from agentcomm.protocol.transports import AMQP_ON_MEMORY, MEMORY_ON_RABBITMQ
from agentcomm.sdk import WrongBus
from agentcomm.sdk.demo_agents import build_demo_agent
from agentcomm.server.testing import running_hub, test_settings
from tests.support.agent import GrpcAgent
from tests.support.waiting import DEFAULT_TIMEOUT


async def register(agent: GrpcAgent, transport: str) -> reg_pb.AgentRegistrationResponse:
    async with asyncio.timeout(DEFAULT_TIMEOUT):
        response: reg_pb.AgentRegistrationResponse = await agent.stub.RegisterAgent(
            reg_pb.AgentRegistrationRequest(
                agent_id=agent.agent_id, agent_name=agent.agent_id, transport=transport
            )
        )
    return response


@pytest.mark.parametrize("transport", ["", "grpc", "memory"])
async def test_a_hub_on_the_in_process_bus_says_so_and_takes_what_reaches_it(
    transport: str,
) -> None:
    async with running_hub(test_settings()) as hub, GrpcAgent(hub.grpc_target, "fine") as agent:
        response = await register(agent, transport)
        assert response.success
        assert response.message_bus == "memory"


@pytest.mark.parametrize(
    ("bus", "transport", "code", "sentence"),
    [
        ("memory", "amqp", grpc.StatusCode.FAILED_PRECONDITION, AMQP_ON_MEMORY),
        pytest.param(
            "rabbitmq",
            "memory",
            grpc.StatusCode.FAILED_PRECONDITION,
            MEMORY_ON_RABBITMQ,
            marks=pytest.mark.rabbitmq,
        ),
        (
            "memory",
            "pigeon",
            grpc.StatusCode.INVALID_ARGUMENT,
            "Unknown transport 'pigeon'; use grpc, amqp or memory.",
        ),
    ],
)
async def test_a_transport_that_cannot_reach_the_bus_is_refused_and_not_listed(
    bus: str,
    transport: str,
    code: grpc.StatusCode,
    sentence: str,
    request: pytest.FixtureRequest,
) -> None:
    overrides = request.getfixturevalue("rabbitmq_env") if bus == "rabbitmq" else {}
    async with (
        running_hub(test_settings(**overrides)) as hub,
        GrpcAgent(hub.grpc_target, "stray") as agent,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await register(agent, transport)
        assert refused.value.code() is code
        assert refused.value.details() == sentence
        assert hub.hub.registry.get("stray") is None


@pytest.mark.parametrize("bus", ["memory", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
async def test_an_agent_whose_bus_has_no_queue_for_it_stops_and_is_let_go(
    bus: str, request: pytest.FixtureRequest
) -> None:
    overrides = request.getfixturevalue("rabbitmq_env") if bus == "rabbitmq" else {}
    async with running_hub(test_settings(**overrides)) as hub:
        settings = hub.settings.model_copy(
            # Beside a hub on RabbitMQ: the default vhost, not the hub's (the test's own).
            update={"grpc_port": hub.server.grpc_port, "rabbitmq_vhost": "/"}
        )
        agent_id = f"elsewhere-{uuid.uuid4().hex[:8]}"
        # Beside a hub on its in-process bus: an in-process bus of the agent's own.
        own_bus = InMemoryBus() if bus == "memory" else None
        agent = build_demo_agent("echo", settings, agent_id=agent_id, bus=own_bus)
        async with asyncio.timeout(DEFAULT_TIMEOUT * 2):
            await agent.start()
            with pytest.raises(WrongBus, match=f"There is no agent_queue_{agent_id} on the"):
                await agent.wait_stopped()
        record = hub.hub.registry.get(agent_id)
        assert record is None or not record.online
