"""Calls between agents across the hubs of a cluster: a frontend on one hub asks an agent of
that hub, which asks an agent registered on the other hub (both buses)."""

from __future__ import annotations

import asyncio

from agentcomm.sdk import Agent, Message
from tests.cluster.test_two_hubs import (
    WAIT,
    Cluster,
    broker_at,
    broker_sees,
    bus_name,
    cluster,
    echo_on,
    online_at,
    rabbitmq,
)
from tests.support.frontend import Frontend

__all__ = ["bus_name", "cluster", "rabbitmq"]  # fixtures of test_two_hubs.py, used here too


async def test_an_agent_asks_an_agent_registered_on_the_other_hub(cluster: Cluster) -> None:
    asker = Agent("asker", agent_id="asker", settings=cluster.agent_settings(cluster.a))

    @asker.on_message
    async def ask_across(message: Message) -> str:
        return await message.ask("echo", message.text)

    async with (
        broker_at(cluster.b) as broker,
        echo_on(cluster, cluster.b),
        await Frontend.registered(cluster.a.ws_url) as frontend,
    ):
        await asyncio.wait_for(asker.start(), WAIT)
        try:
            await online_at(frontend, "echo")
            await broker_sees(broker, "echo")
            await broker_sees(broker, "asker")
            await frontend.send_text("across", receiver_id="asker", message_id="q-1")
            reply = await frontend.next(
                lambda f: (
                    f.get("message_type") in ("REPLY", "ERROR")
                    and f.get("in_reply_to_message_id") == "q-1"
                ),
                timeout=WAIT,
            )
        finally:
            await asyncio.wait_for(asker.stop(), WAIT)
    assert (reply["message_type"], reply["text_payload"]) == ("REPLY", "echo: across"), reply
