"""End to end with separate processes, on each bus: a WebSocket frontend chats with the agents of
one line-up (stacks.py) through the hub and its routing broker(s).

Every scenario runs on the in-process bus and on RabbitMQ (the `bus` parameter, see conftest.py),
except the few marked `only_on`, which say why. The stack starts once per bus; scenarios that
need one broker (conversation stickiness and chunk order are per broker, see docs/broker.md) use
`one_broker`, which on RabbitMQ stops the second broker and starts it again after.
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter

import pytest

from agentcomm.sdk.demo_agents import TYPIST_SECONDS_PER_WORD, typist_answer
from tests.e2e.processes import poll, tracebacks
from tests.e2e.stack_chat import Chat, new_id
from tests.e2e.stacks import (
    AGENT_TIMEOUT,
    DELIVERY_TIMEOUT,
    LINE_UP,
    SLACK,
    Stack,
    off_loop,
    reply_for,
)

# -- the stack ---------------------------------------------------------------------------------


async def test_the_stack_is_up_with_its_brokers_and_agents(stack: Stack) -> None:
    brokers = await off_loop(stack.server.brokers)
    assert set(stack.brokers) <= set(brokers), brokers
    assert all(brokers[b]["is_online"] for b in stack.brokers), brokers
    agents = await off_loop(stack.server.agents)
    for agent_id, member in LINE_UP.items():
        assert agents[agent_id]["is_online"] is True, agents
        assert agents[agent_id]["capabilities"] == member.capabilities, agents
    assert all(process.running for process in stack.agents.values())


# -- routing -----------------------------------------------------------------------------------


async def test_least_busy_spreads_messages_over_every_agent(stack: Stack, chat: Chat) -> None:
    # Equal agents: none still reports itself busy from an earlier test. (On RabbitMQ each broker
    # also counts the TEXTs whose answers went through the other broker as unanswered for a
    # while, see docs/broker.md; this test runs early and sends enough to even that out.)
    await off_loop(stack.server.wait_idle, LINE_UP)
    # Each reply takes a moment, so the agents are busy while the rest are routed.
    texts = [f"spread {n}" for n in range(24)]
    text_ids = [await chat.send_text(text, metadata={"ms_per_word": "60"}) for text in texts]
    await chat.exactly_one_final_each(text_ids)

    receivers = Counter(chat.routed_to(text_id) for text_id in text_ids)
    assert set(receivers) == set(LINE_UP), receivers
    for text_id, text in zip(text_ids, texts, strict=True):
        reply = chat.finals(text_id)[0]
        assert reply["message_type"] == "REPLY", reply
        assert reply["sender_id"] == chat.routed_to(text_id), reply
        assert reply["text_payload"] == reply_for(reply["sender_id"], text), reply


async def test_routing_by_name(chat: Chat) -> None:
    sent = {
        agent_id: [
            await chat.send_text(f"hello {agent_id} {n}", receiver_id=agent_id) for n in (1, 2)
        ]
        for agent_id in LINE_UP
    }
    unknown = await chat.send_text("anyone there?", receiver_id="worker-nobody")
    all_ids = [text_id for ids in sent.values() for text_id in ids]
    await chat.exactly_one_final_each([*all_ids, unknown])

    for agent_id, text_ids in sent.items():
        for n, text_id in zip((1, 2), text_ids, strict=True):
            statuses = [echo["routing_status"] for echo in chat.echoes(text_id)]
            # `delivered` is left out when the reply overtook it (on a busy machine it may).
            assert statuses in (["pending", "routed", "delivered"], ["pending", "routed"]), (
                text_id,
                statuses,
            )
            assert chat.routed_to(text_id) == agent_id
            reply = chat.finals(text_id)[0]
            assert reply["message_type"] == "REPLY", reply
            assert reply["sender_id"] == agent_id, reply
            assert reply["text_payload"] == reply_for(agent_id, f"hello {agent_id} {n}"), reply
    refused = chat.finals(unknown)[0]
    assert refused["message_type"] == "ERROR", refused
    assert refused["error_code"] == "agent_offline", refused
    assert [echo["routing_status"] for echo in chat.echoes(unknown)] == ["pending", "error"]


async def test_routing_by_capability(chat: Chat) -> None:
    cases = [
        # (required_capabilities in each form the broker reads, the agents that have them, count)
        ({"kind": "typist"}, {"typist"}, 1),
        (["streaming"], {"typist"}, 1),
        ("streaming=true", {"typist"}, 1),
        ({"skill": "beta"}, {"worker-beta"}, 3),
        (["pool", "skill=gamma"], {"worker-gamma"}, 3),
        ("lang=python, skill=alpha", {"worker-alpha"}, 3),
        (["kind=echo"], {"echo", "remote-echo"}, 4),
        ({"lang": "python"}, {"worker-alpha", "worker-gamma"}, 4),
    ]
    sent = [
        (
            f"job {case} {n}",
            await chat.send_text(f"job {case} {n}", metadata={"required_capabilities": required}),
            capable,
        )
        for case, (required, capable, count) in enumerate(cases)
        for n in range(count)
    ]
    # What nobody has: refused, and the refusal says what was missing.
    missing = {
        needed: await chat.send_text(
            f"needs {needed}", metadata={"required_capabilities": required}
        )
        for needed, required in (
            ("kind=painter", {"kind": "painter"}),
            ("skill=delta", ["skill=delta"]),
        )
    }
    await chat.exactly_one_final_each([*(i for _, i, _ in sent), *missing.values()])

    for text, text_id, capable in sent:
        receiver = chat.routed_to(text_id)
        assert receiver in capable, (text_id, chat.describe())
        reply = chat.finals(text_id)[0]
        assert reply["message_type"] == "REPLY", reply
        assert reply["text_payload"] == reply_for(receiver, text), reply
    for needed, text_id in missing.items():
        refused = chat.finals(text_id)[0]
        assert refused["message_type"] == "ERROR", refused
        assert refused["error_code"] == "no_agent_available", refused
        assert needed in refused["text_payload"], refused


@pytest.mark.only_on("rabbitmq")  # only RabbitMQ lets two broker processes share one queue
async def test_two_brokers_compete_and_route_each_message_once(stack: Stack, chat: Chat) -> None:
    text_ids = [
        await chat.send_text(
            f"count me {n}", receiver_id="worker-alpha", metadata={"ms_per_word": "0"}
        )
        for n in range(30)
    ]
    await chat.exactly_one_final_each(text_ids)

    def routing_logged() -> bool:
        counts = stack.routed_by(set(text_ids))
        return sum(sum(c.values()) for c in counts.values()) >= len(text_ids)

    # The broker's log line follows its publish; give the last one a moment to be written.
    await off_loop(
        poll, routing_logged, timeout=5, what="every routing decision in the broker logs"
    )
    counts = stack.routed_by(set(text_ids))
    first, second = stack.brokers
    total = counts[first] + counts[second]
    assert set(total) == set(text_ids), counts
    assert all(n == 1 for n in total.values()), f"routed more than once: {total}"
    assert all(counts[b] for b in stack.brokers), f"one broker did all the routing: {counts}"
    for text_id in text_ids:
        assert [e["routing_status"] for e in chat.echoes(text_id)].count("routed") == 1


# -- one broker: stickiness and chunk order are kept per broker ---------------------------------


async def test_a_conversation_stays_with_its_agent(
    stack: Stack, one_broker: str, chat: Chat
) -> None:
    # Two conversations over the whole line-up: round-robin alone would move them every turn.
    conversations = [new_id("conversation") for _ in range(2)]
    sent: dict[str, list[str]] = {c: [] for c in conversations}
    for turn in range(4):
        for conversation in conversations:
            sent[conversation].append(
                await chat.send_text(f"turn {turn}", conversation_id=conversation)
            )
        # Each turn after the answers of the one before.
        await chat.all_finals([ids[-1] for ids in sent.values()])
    all_ids = [i for ids in sent.values() for i in ids]
    await chat.exactly_one_final_each(all_ids)

    owners = {c: {chat.routed_to(i) for i in ids} for c, ids in sent.items()}
    assert all(len(agents) == 1 for agents in owners.values()), owners
    for conversation, text_ids in sent.items():
        for text_id in text_ids:
            assert chat.finals(text_id)[0]["conversation_id"] == conversation
    # The broker says why: after the first turn, each choice was the conversation's agent.
    reasons = stack.routing_reasons(one_broker)
    later_turns = [i for ids in sent.values() for i in ids[1:]]
    assert {reasons.get(i) for i in later_turns} == {"conversation"}, reasons


async def test_streamed_replies_arrive_in_order_and_complete(one_broker: str, chat: Chat) -> None:
    workers = [agent_id for agent_id, member in LINE_UP.items() if member.kind == "worker"]
    text_ids = [
        await chat.send_text(
            f"stream {n} " + " ".join(f"word{w}" for w in range(12)),
            receiver_id=agent_id,
            metadata={"ms_per_word": str(pace)},
        )
        for n, (agent_id, pace) in enumerate(
            (agent_id, pace) for pace in (0, 10) for agent_id in workers
        )
    ]
    typed = await chat.send_text("type this back to me", receiver_id="typist")
    await chat.exactly_one_final_each([*text_ids, typed])

    assert chat.routed_to(typed) == "typist"
    assert chat.stream_text(typed) == typist_answer("type this back to me")
    for text_id in [*text_ids, typed]:
        text = chat.stream_text(text_id)
        assert len(chat.chunks(text_id)) == len(text.split(" "))
        # In arrival order: seq 0, 1, 2 ... and the final REPLY after the last chunk.
        arrived = [
            f
            for f in chat.frames
            if f.get("in_reply_to_message_id") == text_id
            and f.get("message_type") in ("REPLY_CHUNK", "REPLY")
        ]
        assert [f.get("seq") for f in arrived[:-1]] == list(range(len(arrived) - 1)), arrived
        assert arrived[-1]["message_type"] == "REPLY"


@pytest.mark.only_on("rabbitmq")  # two brokers need a bus that two broker processes share
async def test_streamed_replies_are_complete_with_two_brokers(chat: Chat) -> None:
    text_ids = [
        await chat.send_text(
            f"stream {n} " + " ".join(f"word{w}" for w in range(12)),
            receiver_id="worker-alpha",
            metadata={"ms_per_word": "0"},
        )
        for n in range(10)
    ]
    await chat.exactly_one_final_each(text_ids)
    for text_id in text_ids:
        # What holds whatever the order: the final REPLY is whole and unique.
        assert chat.finals(text_id)[0]["text_payload"].endswith(" word11")
    for text_id in text_ids:
        chat.stream_text(text_id)
        seqs = [c["seq"] for c in chat.chunks(text_id)]
        assert seqs == sorted(seqs), f"chunks of {text_id} out of order: {seqs}"


# -- cancel ------------------------------------------------------------------------------------


async def test_cancel_stops_a_reply_in_progress(stack: Stack, chat: Chat) -> None:
    long_text = " ".join(f"w{n}" for n in range(30))
    # ~3 s of typing: the CANCEL surely lands while it streams. The typist's pace is a command,
    # the workers' one a message's metadata.
    slow = {"ms_per_word": "100"}
    await off_loop(stack.server.command, "typist", "pace", "100")
    try:
        typed = await chat.send_text(long_text, receiver_id="typist")
        by_server = await chat.send_text(long_text, receiver_id="worker-alpha", metadata=slow)
        named = await chat.send_text(long_text, receiver_id="worker-gamma", metadata=slow)
        await chat.until(
            lambda: all(chat.chunks(i) for i in (typed, by_server, named)),
            timeout=10,
            what="the first chunks",
        )
        # Without receiver_id the server names the agent working on it; with it, it goes there.
        cancels = [
            await chat.cancel(typed),
            await chat.cancel(by_server),
            await chat.cancel(named, receiver_id="worker-gamma"),
        ]
        still_typing = await chat.send_text("still typing?", receiver_id="typist")
        after = await chat.send_text("still there?", receiver_id="worker-alpha")
        await chat.exactly_one_final_each([typed, by_server, named, still_typing, after])
    finally:
        default_ms = str(round(TYPIST_SECONDS_PER_WORD * 1000))
        await off_loop(stack.server.command, "typist", "pace", default_ms)

    for text_id in (typed, by_server, named):
        final = chat.finals(text_id)[0]
        assert final["message_type"] == "ERROR", final
        assert final["error_code"] == "cancelled", final
    assert len(chat.chunks(typed)) < len(typist_answer(long_text).split(" "))
    for text_id in (by_server, named):
        # "<agent id> heard: " and the 30 words would be 32 chunks.
        assert len(chat.chunks(text_id)) < 32, "the reply was typed to the end"
    # A CANCEL gets no answer of its own when it worked.
    assert not any(chat.finals(cancel_id) for cancel_id in cancels), chat.describe()
    assert chat.finals(still_typing)[0]["message_type"] == "REPLY"
    assert chat.finals(after)[0]["message_type"] == "REPLY"


# -- an agent killed mid-message ----------------------------------------------------------------


async def test_agent_killed_mid_message_goes_offline_and_every_message_is_answered(
    stack: Stack, chat: Chat
) -> None:
    victim = await off_loop(stack.start_demo_agent, "typist", "typist-victim", "bus")
    # Slow typing: each reply would take several seconds.
    await off_loop(stack.server.command, "typist-victim", "pace", "300")
    text_ids = [
        await chat.send_text(f"type slowly please {n}", receiver_id="typist-victim")
        for n in range(4)
    ]
    await chat.until(
        lambda: all(chat.chunks(i) for i in text_ids), timeout=10, what="every reply streaming"
    )
    assert not any(chat.has_final(i) for i in text_ids), chat.describe()

    loop = asyncio.get_running_loop()
    killed_at = loop.time()
    victim.send_signal(signal.SIGKILL)
    await chat.until(
        lambda: chat.saw_offline("typist-victim"),
        timeout=AGENT_TIMEOUT + SLACK,
        what="typist-victim shown offline",
    )
    offline_after = loop.time() - killed_at
    assert offline_after <= AGENT_TIMEOUT, f"offline only {offline_after:.2f} s after the kill"

    # Sent to the dead agent: refused at once. Sent to a live one, or to anyone: answered.
    late = await chat.send_text("are you there?", receiver_id="typist-victim")
    still = await chat.send_text("and you?", receiver_id="remote-echo")
    anyone = await chat.send_text("anyone?")
    await chat.all_finals(
        [*text_ids, late, still, anyone], timeout=DELIVERY_TIMEOUT + AGENT_TIMEOUT + 2 * SLACK
    )
    await chat.exactly_one_final_each([*text_ids, late, still, anyone])

    for text_id in [*text_ids, late]:
        final = chat.finals(text_id)[0]
        assert final["message_type"] == "ERROR", final
        assert final["error_code"] == "agent_offline", final
    assert chat.finals(still)[0]["text_payload"] == "echo: and you?"
    assert chat.finals(anyone)[0]["message_type"] == "REPLY"
    assert chat.routed_to(anyone) in LINE_UP
    agents = await off_loop(stack.server.agents)
    assert agents["typist-victim"]["is_online"] is False
    assert all(agents[agent_id]["is_online"] for agent_id in LINE_UP), agents


async def test_a_grpc_agent_dying_mid_message_is_no_server_error(stack: Stack, chat: Chat) -> None:
    offset = len(stack.server.process.output())
    victim = await off_loop(stack.start_demo_agent, "typist", "doomed-typist", "grpc")
    await off_loop(stack.server.command, "doomed-typist", "pace", "300")
    text_id = await chat.send_text("type slowly", receiver_id="doomed-typist")
    await chat.until(lambda: bool(chat.chunks(text_id)), timeout=10, what="the reply streaming")
    victim.send_signal(signal.SIGKILL)
    await chat.until(
        lambda: chat.saw_offline("doomed-typist"),
        timeout=AGENT_TIMEOUT + SLACK,
        what="doomed-typist shown offline",
    )
    logged = stack.server.process.output()[offset:]
    assert not tracebacks(logged), logged
