"""An agent that opens a new message stream in place of the one it has (a reconnect that
overtook the old stream's end) never had a moment without a stream, so with STREAM_GRACE 0
nobody is told it went offline, and nothing sent to it meanwhile is refused."""

from __future__ import annotations

import pytest

from agentcomm.protocol.models import AgentInfo
from agentcomm.server.testing import running_hub, test_settings
from tests.support.agent import GrpcAgent


@pytest.mark.rabbitmq
@pytest.mark.parametrize("bus", ["memory", "rabbitmq"])
async def test_a_replaced_message_stream_keeps_the_agent_online(
    bus: str, request: pytest.FixtureRequest
) -> None:
    overrides = request.getfixturevalue("rabbitmq_env") if bus == "rabbitmq" else {}
    settings = test_settings(**overrides, stream_grace=0, agent_timeout=3600)
    async with running_hub(settings) as hub, GrpcAgent(hub.grpc_target, "swapper") as agent:
        await agent.register("swapper")
        first = agent.open_messages()
        await first.call.initial_metadata()
        assert hub.hub.registry.is_online("swapper")
        deltas: list[list[AgentInfo]] = []
        hub.hub.registry.subscribe(deltas.append)

        second = agent.open_messages()
        await second.call.initial_metadata()  # the server has opened it
        await first.wait_ended()  # and ended the one it replaced

        went_offline = [info for delta in deltas for info in delta if not info.is_online]
        assert went_offline == []
        assert hub.hub.registry.is_online("swapper")
        await second.cancel()
