"""Hub agents as A2A endpoints, called with a2a-sdk's own client (spec 1.0 and 0.3), on both
buses: a real hub on free ports, the reference broker and SDK agents (echo, the typist that
streams, and agents written here)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from a2a.types import (
    CancelTaskRequest,
    GetTaskRequest,
    StreamResponse,
    SubscribeToTaskRequest,
    TaskState,
)
from a2a.utils.errors import InvalidRequestError

from agentcomm.sdk import Agent, Message
from agentcomm.sdk.demo_agents import build_demo_agent, typist_answer
from agentcomm.server.testing import test_settings
from tests.support.a2a import A2AStack, a2a_stack, collect, text_message, within

VERSIONS = ["1.0", "0.3"]


@pytest.fixture(params=["memory", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
async def stack(request: pytest.FixtureRequest) -> AsyncIterator[A2AStack]:
    overrides = request.getfixturevalue("rabbitmq_env") if request.param == "rabbitmq" else {}
    async with a2a_stack(test_settings(**overrides)) as running:
        settings = running.agent_settings
        await running.run(build_demo_agent("echo", settings, transport="grpc"))
        await running.run(build_demo_agent("typist", settings, transport="grpc"))
        yield running


def sleeper(settings: object) -> Agent:
    """Answers only when cancelled (the SDK then says `cancelled`)."""
    # Said to stream, so that its card offers SubscribeToTask to a2a-sdk's client.
    agent = Agent(
        "sleeper",
        settings=settings,  # type: ignore[arg-type]
        transport="grpc",
        capabilities={"streaming": "true"},
    )

    @agent.on_message
    async def sleep(message: Message) -> str:
        await asyncio.sleep(60)
        return "woke up"

    return agent


def final_state(events: list[StreamResponse]) -> TaskState:
    last = events[-1]
    if last.HasField("status_update"):
        return last.status_update.status.state
    return last.task.status.state


@pytest.mark.parametrize("version", VERSIONS)
async def test_send_message_completes_with_the_reply(stack: A2AStack, version: str) -> None:
    client = await stack.client("echo", version=version, streaming=False)
    events = await collect(client.send_message(text_message("hello", context_id="conv-7")))
    assert len(events) == 1
    task = events[0].task
    assert task.status.state == TaskState.TASK_STATE_COMPLETED, task
    assert task.context_id == "conv-7"
    assert [part.text for part in task.artifacts[0].parts] == ["echo: hello"]
    assert not task.history  # unless asked for with historyLength
    # The task stays readable.
    again = await within(client.get_task(GetTaskRequest(id=task.id, history_length=1)))
    assert again.status.state == TaskState.TASK_STATE_COMPLETED
    assert again.artifacts[0].parts[0].text == "echo: hello"
    assert [part.text for part in again.history[0].parts] == ["hello"]


@pytest.mark.parametrize("version", VERSIONS)
async def test_streaming_gives_working_then_each_chunk_in_order_then_completed(
    stack: A2AStack, version: str
) -> None:
    card = await stack.card("typist")
    assert card.capabilities.streaming is True
    client = await stack.client("typist", version=version)
    events = await collect(client.send_message(text_message("one two three")))
    assert events[0].HasField("task"), events[0]
    states = [e.status_update.status.state for e in events if e.HasField("status_update")]
    assert states[0] == TaskState.TASK_STATE_WORKING
    assert states[-1] == TaskState.TASK_STATE_COMPLETED
    pieces = [
        part.text
        for event in events
        if event.HasField("artifact_update")
        for part in event.artifact_update.artifact.parts
    ]
    assert len(pieces) > 3  # one update per REPLY_CHUNK
    assert "".join(pieces) == typist_answer("one two three")


async def test_context_id_is_the_conversation(stack: A2AStack) -> None:
    agent = Agent("whoami", settings=stack.agent_settings, transport="grpc")

    @agent.on_message
    async def answer(message: Message) -> str:
        return f"{message.conversation_id}|{message.sender_id.startswith('web_')}"

    await stack.run(agent)
    client = await stack.client("whoami", streaming=False)
    events = await collect(client.send_message(text_message("hi", context_id="thread-42")))
    assert events[0].task.artifacts[0].parts[0].text == "thread-42|True"


async def test_cancel_task_reaches_the_agent(stack: A2AStack) -> None:
    await stack.run(sleeper(stack.agent_settings))
    client = await stack.client("sleeper", streaming=False)
    request = text_message("wait")
    request.configuration.return_immediately = True
    events = await collect(client.send_message(request))
    task = events[0].task
    assert task.status.state in (TaskState.TASK_STATE_SUBMITTED, TaskState.TASK_STATE_WORKING)
    canceled = await within(client.cancel_task(CancelTaskRequest(id=task.id)))
    assert canceled.status.state == TaskState.TASK_STATE_CANCELED, canceled
    assert canceled.metadata["error_code"] == "cancelled"


async def test_subscribe_to_a_task_under_way(stack: A2AStack) -> None:
    await stack.run(sleeper(stack.agent_settings))
    client = await stack.client("sleeper")
    polling = await stack.client("sleeper", streaming=False)
    request = text_message("wait")
    request.configuration.return_immediately = True
    task = (await collect(polling.send_message(request)))[0].task

    async def cancel_soon() -> None:
        await asyncio.sleep(0.3)
        await polling.cancel_task(CancelTaskRequest(id=task.id))

    canceller = asyncio.create_task(cancel_soon())
    events = await collect(client.subscribe(SubscribeToTaskRequest(id=task.id)))
    await within(canceller)
    assert events[0].task.id == task.id
    assert final_state(events) == TaskState.TASK_STATE_CANCELED


async def test_agent_failure_is_a_failed_task_with_our_error_code(stack: A2AStack) -> None:
    agent = Agent("grumpy", settings=stack.agent_settings, transport="grpc")

    @agent.on_message
    async def refuse(message: Message) -> str:
        raise RuntimeError("no")

    await stack.run(agent)
    client = await stack.client("grumpy", streaming=False)
    task = (await collect(client.send_message(text_message("please"))))[0].task
    assert task.status.state == TaskState.TASK_STATE_FAILED
    assert task.metadata["error_code"]
    assert task.status.message.metadata["error_code"] == task.metadata["error_code"]


async def test_offline_and_unknown_agents_answer_at_once(stack: A2AStack) -> None:
    agent = await stack.run(
        build_demo_agent("echo", stack.agent_settings, agent_id="gone", transport="grpc")
    )
    client = await stack.client("gone", streaming=False)
    await within(agent.stop())
    task = (await collect(client.send_message(text_message("anyone?"))))[0].task
    assert task.status.state == TaskState.TASK_STATE_FAILED
    assert task.metadata["error_code"] == "agent_offline"

    nobody = await stack.client("echo", streaming=False, url=stack.url("nobody"))
    with pytest.raises(InvalidRequestError) as refused:
        await collect(nobody.send_message(text_message("hello?")))
    assert refused.value.data == {"error_code": "unknown_receiver", "agent_id": "nobody"}


async def test_cards_and_the_directory(stack: A2AStack) -> None:
    card = await stack.card("echo")
    assert card.name == "echo"
    assert card.capabilities.streaming is False
    assert [skill.id for skill in card.skills] == ["kind"]
    assert {(i.protocol_binding, i.protocol_version) for i in card.supported_interfaces} == {
        ("JSONRPC", "1.0"),
        ("JSONRPC", "0.3"),
    }
    assert not card.security_requirements
    missing = await stack.http.get(stack.url("nobody") + "/.well-known/agent-card.json")
    assert missing.status_code == 404
    directory = (await stack.http.get(stack.url())).json()
    assert {"echo", "typist"} <= {skill["id"] for skill in directory["skills"]}
    # The hub's own address: its broker chooses the agent.
    hub = await stack.client("", streaming=False)
    task = (await collect(hub.send_message(text_message("anyone")))).pop().task
    assert task.status.state == TaskState.TASK_STATE_COMPLETED
