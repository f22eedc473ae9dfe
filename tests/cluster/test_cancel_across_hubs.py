"""A CANCEL from a frontend on one hub stops its turn at an agent registered on another hub, over
both agent transports; the frontend gets one `ERROR cancelled`, and the agent is free again.

The hubs and helpers are those of test_two_hubs.py (both buses: two hubs on one RabbitMQ vhost,
or on one in-process bus shared in this process).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from agentcomm.sdk.agent import Agent
from agentcomm.sdk.demo_agents import build_demo_agent
from agentcomm.server.testing import HubEndpoints
from tests.cluster.test_two_hubs import WAIT, Cluster, broker_at, broker_sees, online_at
from tests.support.frontend import Frontend, of_type


@asynccontextmanager
async def typist_on(cluster: Cluster, hub: HubEndpoints, transport: str) -> AsyncIterator[Agent]:
    # An agent taking its work over the bus is handed its hub's bus (on RabbitMQ a connection
    # to the shared vhost, in process a handle on the bus the hubs share) and says so itself.
    if transport == "amqp":
        agent = build_demo_agent(
            "typist", cluster.agent_settings(hub), agent_id="typist", bus=hub.bus
        )
    else:
        agent = build_demo_agent(
            "typist", cluster.agent_settings(hub), agent_id="typist", transport="grpc"
        )
    await asyncio.wait_for(agent.start(), WAIT)
    try:
        yield agent
    finally:
        await asyncio.wait_for(agent.stop(), WAIT)


def final_for(message_id: str) -> Any:
    return lambda frame: (
        frame.get("message_type") in ("REPLY", "ERROR")
        and frame.get("in_reply_to_message_id") == message_id
    )


@pytest.mark.parametrize("transport", ["grpc", "amqp"])
async def test_a_cancel_on_one_hub_stops_a_turn_at_an_agent_on_the_other(
    cluster: Cluster, transport: str
) -> None:
    long_text = " ".join(f"word{i}" for i in range(400))  # about 20 s of typing
    async with (
        broker_at(cluster.a) as broker,
        typist_on(cluster, cluster.b, transport),
        await Frontend.registered(cluster.a.ws_url, capabilities={"stream": True}) as frontend,
    ):
        await online_at(frontend, "typist")
        await broker_sees(broker, "typist")
        await frontend.send_text(long_text, receiver_id="typist", message_id="long-1")
        await frontend.next(of_type("REPLY_CHUNK", in_reply_to_message_id="long-1"), timeout=WAIT)
        await frontend.send({"message_type": "CANCEL", "in_reply_to_message_id": "long-1"})
        final = await frontend.next(final_for("long-1"), timeout=WAIT)
        # The agent is free again: the next turn is answered.
        await frontend.send_text("next", receiver_id="typist", message_id="m-2")
        after = await frontend.next(final_for("m-2"), timeout=WAIT)
        later = [
            frame
            for frame in frontend.take_buffered()
            if frame.get("in_reply_to_message_id") == "long-1"
            and frame.get("message_type") in ("REPLY", "ERROR")
        ]
    assert final["message_type"] == "ERROR", final
    assert final["error_code"] == "cancelled"
    assert after["message_type"] == "REPLY", after
    assert not later, later
