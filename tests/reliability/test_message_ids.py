"""message_ids are unique per sender, not across senders: two frontends that both number their
messages 1, 2, 3 … each get exactly one answer to each, from agents that take their work from
the bus and over gRPC alike."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from agentcomm.dev import DevStack
from agentcomm.sdk.demo_agents import build_demo_agent
from agentcomm.server.testing import test_settings
from tests.support.frontend import Frontend, of_type
from tests.support.waiting import wait_until

TIMEOUT = 10.0
AGENTS = ("echo", "echo-grpc")


@pytest.fixture
async def stack() -> AsyncIterator[DevStack]:
    settings = test_settings(rate_limit_per_second=1000, rate_limit_burst=1000)
    stack = DevStack(settings)
    await stack.start()
    grpc_echo = build_demo_agent(
        "echo",
        settings.model_copy(update={"grpc_port": stack.server.grpc_port}),
        name="echo-grpc",
        agent_id="echo-grpc",
        transport="grpc",
    )
    await grpc_echo.start()
    try:
        # start() returns once the server has the registration; the broker hears of it a
        # moment later, and routes to the agent only from then on.
        broker = stack.broker
        assert broker is not None

        def routable() -> bool:
            info = broker.table.agents.get("echo-grpc")
            return info is not None and info.is_online

        await wait_until(routable, timeout=TIMEOUT, what="the broker to see echo-grpc")
        yield stack
    finally:
        await grpc_echo.stop()
        await stack.stop()


async def test_frontends_may_use_the_same_message_ids(stack: DevStack) -> None:
    url = f"ws://127.0.0.1:{stack.server.http_port}/ws"
    async with (
        await Frontend.registered(url, "alice") as alice,
        await Frontend.registered(url, "bob") as bob,
    ):
        for number in range(1, 6):
            for frontend, name in ((alice, "alice"), (bob, "bob")):
                await frontend.send_text(
                    f"{name} {number}",
                    message_id=str(number),
                    receiver_id=AGENTS[number % len(AGENTS)],
                )
        for frontend, name in ((alice, "alice"), (bob, "bob")):
            for number in range(1, 6):
                reply = await frontend.next(
                    of_type("REPLY", in_reply_to_message_id=str(number)), timeout=TIMEOUT
                )
                assert reply["text_payload"] == f"echo: {name} {number}", reply
            left = frontend.non_presence(await frontend.barrier(timeout=TIMEOUT))
            assert [f for f in left if f["message_type"] in ("REPLY", "ERROR")] == [], left
