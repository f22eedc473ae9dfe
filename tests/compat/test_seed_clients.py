"""The described system's clients against the hub (issue 19): its broker, which passes on only
what is addressed to a known agent and sends everything else back to the server as an ERROR,
and its frontend flow, with our SDK agents answering, on both buses.

Every accepted TEXT ends in exactly one answer the frontend can show: the agent's reply, the
broker's refusal in its own words, or `answer_timeout` — never silence.
"""

from __future__ import annotations

import logging
import re

import pytest

from agentcomm.protocol.ids import is_frontend_id
from agentcomm.sdk import Message
from agentcomm.sdk.demo_agents import typist_answer
from tests.compat.conftest import BOTH_BUSES, EVERY_FLAVOUR, OpenStack
from tests.compat.seed_broker import NO_AGENT_SENTENCE
from tests.compat.seed_frontend import KNOWN_STATUSES, WAIT, Asked
from tests.support.agent import GrpcAgent
from tests.support.bus import BROKER_INPUT_QUEUE, publish_json
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(90)


def events(metrics: str, event: str) -> float:
    found = re.search(rf'agentcomm_answer_events_total{{event="{event}"}} (\S+)', metrics)
    assert found, f"no {event} in /metrics"
    return float(found[1])


def answered_by(asked: Asked, message_type: str) -> dict[str, object]:
    answer = asked.answer
    assert answer is not None
    assert answer["message_type"] == message_type, answer
    assert answer["in_reply_to_message_id"] == asked.message_id
    assert answer["send_timestamp"]
    return answer


@pytest.mark.parametrize("flavour_env", EVERY_FLAVOUR, indirect=True)
async def test_the_seed_readme_frontend_flow_gets_each_answer_once(open_stack: OpenStack) -> None:
    stack = await open_stack()
    await stack.demo_agent("echo")
    ui = await stack.frontend()
    assert is_frontend_id(ui.frontend_id)
    listed = {agent["agent_id"]: agent for agent in ui.agent_list}
    assert listed["echo"]["is_online"] is True

    for receiver in (None, "echo"):  # the broker chooses, or the frontend names the agent
        asked = await ui.ask("Hi!", receiver_id=receiver)
        reply = answered_by(asked, "REPLY")
        assert (reply["text_payload"], reply["sender_id"]) == ("echo: Hi!", "echo")
        assert reply["receiver_id"] == ui.frontend_id
        assert not {"error_code", "routing_status_message", "_client_id"} & reply.keys()
        # `delivered` is left out when the reply overtook it (it would only confuse).
        assert asked.statuses in (["pending", "routed", "delivered"], ["pending", "routed"])
    # The broker sent each reply back to the server; nothing else reached the frontend.
    assert [sent["receiver_id"] for sent in stack.broker.sent].count("Server") == 2
    assert await ui.nothing_more() == []
    assert events(await stack.metrics(), "bounce_delivered") == 2
    assert events(await stack.metrics(), "bounce_unmatched") == 0


@pytest.mark.parametrize("flavour_env", EVERY_FLAVOUR, indirect=True)
async def test_a_streamed_reply_arrives_whole_and_once(open_stack: OpenStack) -> None:
    stack = await open_stack()
    await stack.demo_agent("typist")
    ui = await stack.frontend(capabilities={"stream": True})
    asked = await ui.ask("stream this please")
    # The chunks of an answer whose route is known skip the broker (docs/protocol.md), so
    # they reach the frontend in order even behind this broker, which would lose their text;
    # the final REPLY, which this broker sends back to the server, comes once, after them.
    assert asked.answer is not None
    received = [asked.answer]
    while received[-1]["message_type"] == "REPLY_CHUNK":
        received.append(
            await ui.frontend.next(
                lambda f: f.get("in_reply_to_message_id") == asked.message_id, timeout=WAIT
            )
        )
    *chunks, reply = received
    assert reply["message_type"] == "REPLY"
    assert reply["text_payload"] == typist_answer("stream this please")
    assert [chunk["seq"] for chunk in chunks] == list(range(len(chunks)))
    assert "".join(str(chunk["text_delta"]) for chunk in chunks) == reply["text_payload"]
    assert await ui.nothing_more() == []


@pytest.mark.parametrize("flavour_env", BOTH_BUSES, indirect=True)
async def test_an_agent_error_reaches_the_frontend_as_an_error(open_stack: OpenStack) -> None:
    stack = await open_stack()
    fragile = stack.new_agent("fragile")

    @fragile.on_message
    async def handle(message: Message) -> str:
        raise RuntimeError("no")

    await stack.start(fragile)
    ui = await stack.frontend()
    error = answered_by(await ui.ask("break", receiver_id="fragile"), "ERROR")
    assert error["error_code"] == "internal"
    assert error["sender_id"] == "fragile"
    assert "RuntimeError" in str(error["text_payload"])
    assert await ui.nothing_more() == []


@pytest.mark.parametrize("flavour_env", BOTH_BUSES, indirect=True)
async def test_no_agent_online_is_refused_in_the_brokers_words(open_stack: OpenStack) -> None:
    stack = await open_stack()
    ui = await stack.frontend()
    asked = await ui.ask("anyone?")
    assert asked.statuses == ["pending", "error"]
    echo = asked.echoes[-1]
    assert (echo["error_code"], echo["routing_status_message"]) == (
        "no_agent_available",
        NO_AGENT_SENTENCE,
    )
    error = answered_by(asked, "ERROR")
    assert (error["error_code"], error["text_payload"]) == ("no_agent_available", NO_AGENT_SENTENCE)
    assert error["message_id"] != asked.message_id
    assert error["sender_id"] == "server"
    assert await ui.nothing_more() == []


@pytest.mark.parametrize("flavour_env", BOTH_BUSES, indirect=True)
async def test_a_text_nobody_answers_ends_in_answer_timeout(open_stack: OpenStack) -> None:
    stack = await open_stack(answer_timeout=1.0)
    async with GrpcAgent(stack.hub.grpc_target, "mute", session="mute") as mute:
        await mute.register("mute")  # takes its work from nowhere and never answers
        await stack.broker.knows("mute")
        ui = await stack.frontend()
        asked = await ui.ask("hello?", receiver_id="mute")
    assert asked.statuses == ["pending", "routed", "delivered", "error"]
    assert asked.echoes[-1]["error_code"] == "answer_timeout"
    error = answered_by(asked, "ERROR")
    assert error["error_code"] == "answer_timeout"
    assert "1 s" in str(error["text_payload"])
    assert events(await stack.metrics(), "answer_timeout") == 1


@pytest.mark.parametrize("flavour_env", BOTH_BUSES, indirect=True)
async def test_a_client_that_knows_no_delivered_status_can_turn_it_off(
    open_stack: OpenStack,
) -> None:
    stack = await open_stack()
    await stack.demo_agent("echo")
    ui = await stack.frontend(capabilities={"delivered_echo": False})
    asked = await ui.ask("Hi!")
    assert asked.statuses == ["pending", "routed"]
    assert set(asked.statuses) <= KNOWN_STATUSES
    assert answered_by(asked, "REPLY")["text_payload"] == "echo: Hi!"


@pytest.mark.parametrize("flavour_env", BOTH_BUSES, indirect=True)
async def test_an_answer_nobody_waits_for_is_logged_once_and_counted(
    open_stack: OpenStack, caplog: pytest.LogCaptureFixture
) -> None:
    stack = await open_stack()
    await stack.demo_agent("echo")
    ui = await stack.frontend()
    stray = {
        "message_type": "REPLY",
        "message_id": "stray-reply-1",
        "sender_id": "echo",
        "receiver_id": ui.frontend_id,
        "in_reply_to_message_id": "never-sent",
        "text_payload": "for no one",
        "routing_status": "pending",
    }
    with caplog.at_level(logging.WARNING, logger="agentcomm"):
        await publish_json(stack.bus, BROKER_INPUT_QUEUE, stray)
        await wait_until(
            lambda: any("stray-reply-1" in r.getMessage() for r in caplog.records),
            timeout=15,
            what="the unmatched answer to be logged",
        )
    lines = [r.getMessage() for r in caplog.records if "stray-reply-1" in r.getMessage()]
    assert len(lines) == 1
    assert "echo" in lines[0]
    assert events(await stack.metrics(), "bounce_unmatched") == 1
    # The frontend is told nothing about a message it never sent, and the hub goes on.
    assert await ui.nothing_more() == []
    asked = await ui.ask("still there?")
    assert answered_by(asked, "REPLY")["text_payload"] == "echo: still there?"
