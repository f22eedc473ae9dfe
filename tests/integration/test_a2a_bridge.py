"""Outside A2A agents (written with a2a-sdk's server side) on the hub through the bridge,
reached from a WebSocket frontend as the web UI reaches any agent, and over A2A again through
the hub's own gateway; on both buses."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from a2a.types import TaskState

from agentcomm.gateways.a2a.bridge import A2ABridge
from agentcomm.server.testing import test_settings
from tests.support.a2a import WAIT, A2AStack, a2a_stack, collect, text_message, within
from tests.support.a2a_remote import remote_agent
from tests.support.frontend import Frontend
from tests.support.waiting import wait_until


@pytest.fixture(params=["memory", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
async def stack(request: pytest.FixtureRequest) -> AsyncIterator[A2AStack]:
    overrides = request.getfixturevalue("rabbitmq_env") if request.param == "rabbitmq" else {}
    async with a2a_stack(test_settings(**overrides)) as running:
        yield running


async def bridged(stack: A2AStack, url: str, name: str) -> A2ABridge:
    settings = stack.agent_settings.model_copy(update={"a2a_remote_check_interval": 0.2})
    bridge = A2ABridge(url, settings, name=name, transport="grpc")
    await within(bridge.start())
    stack.exits.push_async_callback(lambda: within(bridge.stop()))

    def routable() -> bool:
        info = stack.broker.table.agents.get(name)
        return info is not None and info.is_online

    await wait_until(routable, timeout=WAIT, what=f"the broker to see {name}")
    return bridge


def answer_to(message_id: str) -> Any:
    def match(frame: dict[str, Any]) -> bool:
        return (
            frame.get("message_type") in ("REPLY", "ERROR")
            and frame.get("in_reply_to_message_id") == message_id
        )

    return match


async def test_a_remote_echo_answers_a_frontend(stack: A2AStack) -> None:
    async with remote_agent("Remote Echo", "echo", streaming=False) as remote:
        bridge = await bridged(stack, remote.url, "remote-echo")
        info = stack.hub.hub.cluster.info("remote-echo")
        assert info is not None
        assert info.capabilities["echo"] == "echo things"
        assert info.capabilities["streaming"] == "false"
        async with await Frontend.registered(stack.hub.ws_url) as alice:
            await alice.send_text(
                "hi there", message_id="m1", receiver_id="remote-echo", conversation_id="c-9"
            )
            reply = await alice.next(answer_to("m1"), timeout=WAIT)
        assert reply["message_type"] == "REPLY", reply
        assert reply["text_payload"] == "remote echo: hi there"
        assert remote.behaviour.contexts == ["c-9"]
        assert bridge.agent is not None


async def test_a_streaming_remote_streams_to_the_frontend_and_over_a2a(stack: A2AStack) -> None:
    async with remote_agent("Remote Typist", "stream", streaming=True) as remote:
        await bridged(stack, remote.url, "remote-typist")
        async with await Frontend.registered(
            stack.hub.ws_url, capabilities={"stream": True}
        ) as alice:
            await alice.send_text("a b c", message_id="m1", receiver_id="remote-typist")
            reply = await alice.next(answer_to("m1"), timeout=WAIT)
            chunks = [
                frame["text_delta"]
                for frame in alice.take_buffered()
                if frame.get("message_type") == "REPLY_CHUNK"
            ]
        assert reply["message_type"] == "REPLY", reply
        assert reply["text_payload"] == "<a><b><c>"
        assert chunks == ["<a>", "<b>", "<c>"]
        # The same agent, over A2A through the hub's gateway: A2A on both sides of the hub.
        client = await stack.client("remote-typist")
        events = await collect(client.send_message(text_message("x y")))
        pieces = [
            part.text
            for event in events
            if event.HasField("artifact_update")
            for part in event.artifact_update.artifact.parts
        ]
        assert pieces == ["<x>", "<y>"]
        assert events[-1].status_update.status.state == TaskState.TASK_STATE_COMPLETED


async def test_cancel_reaches_the_remote_task(stack: A2AStack) -> None:
    async with remote_agent("Remote Sloth", "slow", streaming=True) as remote:
        await bridged(stack, remote.url, "remote-sloth")
        async with await Frontend.registered(stack.hub.ws_url) as alice:
            await alice.send_text("take your time", message_id="m1", receiver_id="remote-sloth")
            await alice.next(
                lambda f: (
                    f.get("message_type") == "TEXT" and f.get("routing_status") == "delivered"
                ),
                timeout=WAIT,
            )
            await wait_until(
                lambda: bool(remote.behaviour.contexts), timeout=WAIT, what="the remote to start"
            )
            await asyncio.sleep(0.2)
            await alice.send({"message_type": "CANCEL", "in_reply_to_message_id": "m1"})
            answer = await alice.next(answer_to("m1"), timeout=WAIT)
        assert answer["message_type"] == "ERROR", answer
        assert answer["error_code"] == "cancelled"
        await wait_until(
            lambda: len(remote.behaviour.cancelled) == 1,
            timeout=WAIT,
            what="CancelTask at the remote",
        )


async def test_remote_failures_and_a_remote_that_goes_away(stack: A2AStack) -> None:
    async with remote_agent("Remote Grump", "fail", streaming=False) as remote:
        await bridged(stack, remote.url, "remote-grump")
        async with await Frontend.registered(stack.hub.ws_url) as alice:
            await alice.send_text("coffee?", message_id="m1", receiver_id="remote-grump")
            answer = await alice.next(answer_to("m1"), timeout=WAIT)
            assert answer["message_type"] == "ERROR", answer
            assert answer["error_code"] == "remote_failed"
            assert "out of coffee" in answer["text_payload"]

            await remote.stop()

            def offline() -> bool:
                info = stack.hub.hub.cluster.info("remote-grump")
                return info is not None and not info.is_online

            await wait_until(offline, timeout=WAIT, what="the bridged agent to go offline")
            await alice.send_text("still there?", message_id="m2", receiver_id="remote-grump")
            gone = await alice.next(answer_to("m2"), timeout=WAIT)
        assert gone["message_type"] == "ERROR", gone
        assert gone["error_code"] == "agent_offline"
