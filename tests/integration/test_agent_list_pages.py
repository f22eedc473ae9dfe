"""An agent list larger than any one message: brokers (SubscribeToAgentStatus, GetAgentStatus,
the reference broker) and frontends read it in pages, each well within gRPC's default receive
limit of 4 MiB, and end with every agent.

Sixty agents with 64 capabilities of 1,000 characters make a list of about 4.2 MB: one response
of it used to fail a broker with RESOURCE_EXHAUSTED, after which it routed with no agents.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import grpc
import pytest

from agentcomm.broker.service import ReferenceBroker
from agentcomm.core.presence_views import AGENT_PAGE_BYTES
from agentcomm.generated import agent_registration_service_pb2 as reg_pb
from agentcomm.generated import agent_registration_service_pb2_grpc as reg_grpc
from agentcomm.generated import agent_status_service_pb2 as status_pb
from agentcomm.generated import agent_status_service_pb2_grpc as status_grpc
from agentcomm.server.testing import HubEndpoints, running_hub, test_settings
from tests.support.frontend import Frontend

AGENTS = 60
CAPABILITIES = {f"capability-{index:02}": "v" * 1000 for index in range(64)}
# A page holds up to AGENT_PAGE_BYTES and one agent more.
LARGEST_PAGE = AGENT_PAGE_BYTES + 80_000
# What a client that leaves gRPC's receive limit alone accepts.
GRPC_DEFAULT_LIMIT = 4 * 1024 * 1024
WAIT = 15.0

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def hub() -> AsyncIterator[HubEndpoints]:
    async with running_hub(test_settings(agent_timeout=3600, stream_grace=3600)) as hub:
        async with grpc.aio.insecure_channel(hub.grpc_target) as channel:
            stub = reg_grpc.AgentRegistrationServiceStub(channel)
            for index in range(AGENTS):
                await stub.RegisterAgent(
                    reg_pb.AgentRegistrationRequest(
                        agent_id=f"fat-{index:02}", agent_name="fat", capabilities=CAPABILITIES
                    ),
                    metadata=(("agentcomm-session", f"s{index}"),),
                    timeout=WAIT,
                )
        yield hub


def limited_channel(hub: HubEndpoints) -> grpc.aio.Channel:
    # Well below the whole list (4.2 MB), so any response of it all at once would fail here.
    return grpc.aio.insecure_channel(
        hub.grpc_target, options=[("grpc.max_receive_message_length", 1024 * 1024)]
    )


async def test_the_status_stream_sends_the_list_in_pages_then_deltas(hub: HubEndpoints) -> None:
    async with limited_channel(hub) as channel:
        call = status_grpc.AgentStatusServiceStub(channel).SubscribeToAgentStatus(
            status_pb.AgentStatusRequest(broker_id="pager")
        )
        pages: list[status_pb.AgentStatusResponse] = []
        async with asyncio.timeout(WAIT):
            while not pages or pages[-1].more_pages:
                pages.append(await call.read())
        assert len(pages) > 4
        assert [page.is_full_update for page in pages] == [True] + [False] * (len(pages) - 1)
        assert all(page.ByteSize() <= LARGEST_PAGE for page in pages)
        ids = [info.agent_id for page in pages for info in page.agents]
        assert ids == [f"fat-{index:02}" for index in range(AGENTS)]
        # Deltas follow as before.
        hub.hub.registry.unregister("fat-07")
        async with asyncio.timeout(WAIT):
            delta = await call.read()
        assert delta.is_full_update is False
        assert [(info.agent_id, info.is_online) for info in delta.agents] == [("fat-07", False)]
        call.cancel()


async def test_get_agent_status_is_paged_by_the_last_id(hub: HubEndpoints) -> None:
    async with limited_channel(hub) as channel:
        stub = status_grpc.AgentStatusServiceStub(channel)
        ids: list[str] = []
        after = ""
        for _ in range(AGENTS):
            page = await stub.GetAgentStatus(
                status_pb.AgentStatusRequest(broker_id="pager", after_agent_id=after),
                timeout=WAIT,
            )
            assert page.is_full_update is (after == "")
            ids += [info.agent_id for info in page.agents]
            if not page.more_pages:
                break
            after = page.agents[-1].agent_id
        assert ids == [f"fat-{index:02}" for index in range(AGENTS)]


async def test_the_reference_broker_knows_every_agent(hub: HubEndpoints) -> None:
    broker = ReferenceBroker(hub.bus, hub.grpc_target, start_timeout=WAIT)
    async with broker:
        async with asyncio.timeout(WAIT):
            await broker.wait_for_presence(lambda table: len(table.agents) == AGENTS)
        assert not broker.table.stale
        assert all(agent.is_online for agent in broker.table.agents.values())


async def test_a_frontend_gets_the_list_in_pages(hub: HubEndpoints) -> None:
    frontend = await Frontend.registered(hub.ws_url)
    try:
        assert frontend.first_status is not None
        pages = [frontend.first_status]
        while pages[-1].get("more_pages"):
            pages.append(
                await frontend.next(lambda frame: frame["message_type"] == "AGENT_STATUS_UPDATE")
            )
        assert all(len(json.dumps(page)) <= LARGEST_PAGE for page in pages)
        ids = [agent["agent_id"] for page in pages for agent in page["agents"]]
        assert ids == [f"fat-{index:02}" for index in range(AGENTS)]
    finally:
        await frontend.close()
