"""With AUTH_SECRET set, an SDK agent presents its token on every call and is refused without
one, or with one for another agent."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest

from agentcomm.broker.service import ReferenceBroker
from agentcomm.core.auth import Authenticator, Role
from agentcomm.sdk import RegistrationRefused
from agentcomm.sdk.demo_agents import build_demo_agent
from agentcomm.server.testing import running_hub, test_settings
from tests.integration.test_sdk_agents import Stack, chat, within
from tests.support.frontend import Frontend

SECRET = "sdk-test-secret-that-is-long-enough-for-hs256"


def token(role: Role, subject: str) -> str:
    return Authenticator(SECRET).mint(role, subject, 300)


@pytest.fixture
async def guarded() -> AsyncIterator[Stack]:
    async with AsyncExitStack() as exits:
        hub = await exits.enter_async_context(running_hub(test_settings(auth_secret=SECRET)))
        broker = ReferenceBroker(
            hub.bus, hub.grpc_target, broker_id="broker-1", token=token(Role.BROKER, "broker-1")
        )
        await within(broker.start())
        exits.push_async_callback(lambda: within(broker.stop()))
        yield Stack(hub, hub.bus, broker)


async def test_an_agent_with_its_token_registers_and_answers(guarded: Stack) -> None:
    settings = guarded.agent_settings().model_copy(
        update={"auth_token": token(Role.AGENT, "echo-7")}
    )
    agent = build_demo_agent("echo", settings, transport="grpc")  # the id comes from the token
    async with guarded.running(agent):
        assert agent.id == "echo-7"
        url = f"{guarded.hub.ws_url}?token={token(Role.FRONTEND, 'alice')}"
        async with await Frontend.registered(url) as alice:
            reply = await chat(alice, "guarded", "m-1")
    assert reply["text_payload"] == "echo: guarded"


@pytest.mark.parametrize("agent_token", ["", "another-agent"])
async def test_an_agent_without_its_own_token_is_refused(guarded: Stack, agent_token: str) -> None:
    settings = guarded.agent_settings().model_copy(
        update={"auth_token": token(Role.AGENT, agent_token) if agent_token else ""}
    )
    agent = build_demo_agent("echo", settings, agent_id="echo")
    with pytest.raises(RegistrationRefused):
        await within(agent.start())
