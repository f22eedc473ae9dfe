"""End to end over the real RabbitMQ, every part its own process: one `agentcomm serve`, two
`agentcomm broker`s and three agents (tests/e2e/agents/worker.py, two taking their work from
the bus and one over gRPC), talked to by a WebSocket frontend.

The stack starts once for the module, in a vhost of its own. The server runs with short
timeouts (AGENT_TIMEOUT, STREAM_GRACE, DELIVERY_TIMEOUT) so that the agent killed mid-message
is handled within seconds. Scenarios that need one broker (conversation stickiness and chunk
order are per broker, see docs/broker.md) stop the second broker and start it again after.
"""

from __future__ import annotations

import asyncio
import re
import signal
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest

from tests.e2e.processes import (
    Process,
    Processes,
    Server,
    fresh_vhost,
    poll,
    rabbitmq_env,
    restart,
    start_broker,
    start_demo_agent,
    start_server,
    start_worker,
    wait_broker_routing,
)
from tests.e2e.stack_chat import Chat, new_id

pytestmark = pytest.mark.rabbitmq

AGENT_TIMEOUT = 3.0
STREAM_GRACE = 1.0
DELIVERY_TIMEOUT = 4.0
HEARTBEAT_INTERVAL = 1
# Scheduling slack on a loaded machine, on top of the server's own deadlines.
SLACK = 1.5

WORKERS = {
    # agent id: (capabilities, transport)
    "worker-alpha": ({"pool": "e2e", "skill": "alpha", "lang": "python"}, "amqp"),
    "worker-beta": ({"pool": "e2e", "skill": "beta", "lang": "rust"}, "amqp"),
    "worker-gamma": ({"pool": "e2e", "skill": "gamma", "lang": "python"}, "grpc"),
}
BROKERS = ("broker_e2e_a", "broker_e2e_b")
# "DEBUG agentcomm.broker.service: TEXT <message_id> to <agent_id> (<why>)"
ROUTED_LINE = re.compile(r"agentcomm\.broker\.service: TEXT (\S+) to (\S+) \(([^)]*)\)")


@dataclass
class Stack:
    processes: Processes
    server: Server
    brokers: dict[str, Process]
    agents: dict[str, Process]

    def routing_reasons(self, broker_id: str) -> dict[str, str]:
        """message id -> the rule that chose its agent, from the broker's DEBUG log."""
        output = self.brokers[broker_id].output()
        return {match.group(1): match.group(3) for match in ROUTED_LINE.finditer(output)}

    def routed_by(self, text_ids: set[str]) -> dict[str, Counter[str]]:
        """How many times each broker routed each of `text_ids` (from its DEBUG log)."""
        counts: dict[str, Counter[str]] = {}
        for broker_id, process in self.brokers.items():
            counts[broker_id] = Counter(
                match.group(1)
                for match in ROUTED_LINE.finditer(process.output())
                if match.group(1) in text_ids
            )
        return counts


@pytest.fixture(scope="module")
def stack(rabbitmq_available: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with fresh_vhost() as vhost:
        processes = Processes(
            tmp_path_factory.mktemp("e2e-rabbitmq"), rabbitmq_env(vhost) | {"LOG_LEVEL": "INFO"}
        )
        try:
            server = start_server(
                processes,
                "server",
                "serve",
                "--agent-timeout",
                str(AGENT_TIMEOUT),
                "--stream-grace",
                str(STREAM_GRACE),
                "--delivery-timeout",
                str(DELIVERY_TIMEOUT),
                "--heartbeat-interval",
                str(HEARTBEAT_INTERVAL),
            )
            # DEBUG: each broker logs every message it routes, which tells them apart.
            brokers = {
                broker_id: start_broker(processes, server, broker_id, "--log-level", "DEBUG")
                for broker_id in BROKERS
            }
            agents = {
                agent_id: start_worker(
                    processes,
                    server,
                    agent_id,
                    capabilities=capabilities,
                    transport=transport,
                    wait=False,
                )
                for agent_id, (capabilities, transport) in WORKERS.items()
            }
            server.wait_agents(WORKERS, alive=agents.values())
            yield Stack(processes, server, brokers, agents)
        finally:
            problems = processes.close()
    assert not problems, "\n\n".join(problems)


@pytest.fixture(autouse=True)
def process_logs_on_failure(request: pytest.FixtureRequest, stack: Stack) -> Iterator[None]:
    """When the test failed, its teardown reports the tail of every process's log."""
    failed_before = request.session.testsfailed
    yield
    if request.session.testsfailed > failed_before:
        pytest.fail(f"Logs of the stack's processes:\n{stack.processes.tails()}", pytrace=False)


@pytest.fixture
async def chat(stack: Stack) -> AsyncIterator[Chat]:
    async with await Chat.open(stack.server.ws_url, "e2e-rabbitmq") as chat:
        yield chat


@pytest.fixture
def one_broker(stack: Stack) -> Iterator[Process]:
    """Only the first broker routes during the test: the second is stopped (SIGTERM, a clean
    exit) and started again afterwards."""
    first, second = (stack.brokers[b] for b in BROKERS)
    assert second.stop(signal.SIGTERM) == 0, second.tail()
    try:
        yield first
    finally:
        wait_broker_routing(second, after=restart(second))


def replier(reply: dict[str, object]) -> str:
    """The worker that wrote a reply ("<agent id> heard: ...")."""
    text = str(reply.get("text_payload"))
    assert " heard: " in text, reply
    return text.split(" heard: ", 1)[0]


# -- the stack ---------------------------------------------------------------------------------


async def test_the_stack_is_up_with_two_brokers_and_three_agents(stack: Stack) -> None:
    brokers = await asyncio.to_thread(stack.server.brokers)
    assert set(BROKERS) <= set(brokers), brokers
    assert all(brokers[b]["is_online"] for b in BROKERS), brokers
    agents = await asyncio.to_thread(stack.server.agents)
    for agent_id, (capabilities, _) in WORKERS.items():
        assert agents[agent_id]["is_online"] is True, agents
        assert agents[agent_id]["capabilities"] == capabilities, agents


# -- routing -----------------------------------------------------------------------------------


async def test_least_busy_spreads_messages_over_every_agent(stack: Stack, chat: Chat) -> None:
    # Equal agents: none still reports itself busy from an earlier test. (Each broker also
    # counts the TEXTs whose answers went through the other broker as unanswered for a while,
    # see docs/broker.md; this test runs early and sends enough to even that out.)
    await asyncio.to_thread(stack.server.wait_idle, WORKERS)
    # Each reply takes a moment, so the agents are busy while the rest are routed.
    text_ids = [
        await chat.send_text(f"spread {n}", metadata={"ms_per_word": "60"}) for n in range(24)
    ]
    await chat.exactly_one_final_each(text_ids)

    receivers = Counter(chat.routed_to(text_id) for text_id in text_ids)
    assert set(receivers) == set(WORKERS), receivers
    for text_id in text_ids:
        reply = chat.finals(text_id)[0]
        assert reply["message_type"] == "REPLY", reply
        assert replier(reply) == chat.routed_to(text_id)
        assert reply["text_payload"].endswith(f"spread {text_ids.index(text_id)}")


async def test_routing_by_name(chat: Chat) -> None:
    sent = {
        agent_id: [
            await chat.send_text(f"hello {agent_id} {n}", receiver_id=agent_id) for n in (1, 2)
        ]
        for agent_id in WORKERS
    }
    unknown = await chat.send_text("anyone there?", receiver_id="worker-nobody")
    all_ids = [text_id for ids in sent.values() for text_id in ids]
    await chat.exactly_one_final_each([*all_ids, unknown])

    for agent_id, text_ids in sent.items():
        for text_id in text_ids:
            statuses = [echo["routing_status"] for echo in chat.echoes(text_id)]
            assert statuses == ["pending", "routed", "delivered"], (text_id, statuses)
            assert chat.routed_to(text_id) == agent_id
            assert replier(chat.finals(text_id)[0]) == agent_id
    refused = chat.finals(unknown)[0]
    assert refused["message_type"] == "ERROR", refused
    assert refused["error_code"] == "agent_offline", refused
    assert [echo["routing_status"] for echo in chat.echoes(unknown)] == ["pending", "error"]


async def test_routing_by_capability(chat: Chat) -> None:
    cases = {
        # required_capabilities in each form the broker reads -> the only agent that has them
        "worker-beta": {"skill": "beta"},
        "worker-gamma": ["pool", "skill=gamma"],
        "worker-alpha": "lang=python, skill=alpha",
    }
    sent = {
        agent_id: [
            await chat.send_text(f"job {n}", metadata={"required_capabilities": required})
            for n in range(3)
        ]
        for agent_id, required in cases.items()
    }
    python_only = [
        await chat.send_text(
            f"python job {n}", metadata={"required_capabilities": {"lang": "python"}}
        )
        for n in range(4)
    ]
    missing = await chat.send_text(
        "needs a skill nobody has", metadata={"required_capabilities": {"skill": "delta"}}
    )
    all_ids = [*(i for ids in sent.values() for i in ids), *python_only, missing]
    await chat.exactly_one_final_each(all_ids)

    for agent_id, text_ids in sent.items():
        assert {chat.routed_to(i) for i in text_ids} == {agent_id}, chat.describe()
        assert {replier(chat.finals(i)[0]) for i in text_ids} == {agent_id}
    assert {chat.routed_to(i) for i in python_only} <= {"worker-alpha", "worker-gamma"}
    refused = chat.finals(missing)[0]
    assert refused["message_type"] == "ERROR", refused
    assert refused["error_code"] == "no_agent_available", refused
    assert "skill=delta" in refused["text_payload"], refused


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
    await asyncio.to_thread(
        poll, routing_logged, timeout=5, what="every routing decision in the broker logs"
    )
    counts = stack.routed_by(set(text_ids))
    total = counts[BROKERS[0]] + counts[BROKERS[1]]
    assert set(total) == set(text_ids), counts
    assert all(n == 1 for n in total.values()), f"routed more than once: {total}"
    assert all(counts[b] for b in BROKERS), f"one broker did all the routing: {counts}"
    for text_id in text_ids:
        assert [e["routing_status"] for e in chat.echoes(text_id)].count("routed") == 1


# -- one broker: stickiness and chunk order are kept per broker ---------------------------------


async def test_a_conversation_stays_with_its_agent(
    stack: Stack, one_broker: Process, chat: Chat
) -> None:
    # Two conversations over three agents: round-robin alone would move them every turn.
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
    reasons = stack.routing_reasons(BROKERS[0])
    later_turns = [i for ids in sent.values() for i in ids[1:]]
    assert {reasons.get(i) for i in later_turns} == {"conversation"}, reasons


async def test_streamed_replies_arrive_in_order_and_complete(
    one_broker: Process, chat: Chat
) -> None:
    text_ids = [
        await chat.send_text(
            f"stream {n} " + " ".join(f"word{w}" for w in range(12)),
            receiver_id=agent_id,
            metadata={"ms_per_word": str(pace)},
        )
        for n, (agent_id, pace) in enumerate(
            (agent_id, pace) for pace in (0, 10) for agent_id in WORKERS
        )
    ]
    await chat.exactly_one_final_each(text_ids)
    for text_id in text_ids:
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


async def test_cancel_stops_a_reply_in_progress(chat: Chat) -> None:
    long_text = " ".join(f"w{n}" for n in range(30))
    # ~3 s of typing: the CANCEL surely lands while it streams.
    slow = {"ms_per_word": "100"}
    by_server = await chat.send_text(long_text, receiver_id="worker-alpha", metadata=slow)
    named = await chat.send_text(long_text, receiver_id="worker-gamma", metadata=slow)
    await chat.until(
        lambda: bool(chat.chunks(by_server)) and bool(chat.chunks(named)),
        timeout=10,
        what="the first chunks",
    )
    # Without receiver_id the server names the agent working on it; with it, it goes there.
    cancels = [await chat.cancel(by_server), await chat.cancel(named, receiver_id="worker-gamma")]
    after = await chat.send_text("still there?", receiver_id="worker-alpha")
    await chat.exactly_one_final_each([by_server, named, after])

    for text_id in (by_server, named):
        final = chat.finals(text_id)[0]
        assert final["message_type"] == "ERROR", final
        assert final["error_code"] == "cancelled", final
        # "<agent id> heard: " and the 30 words would be 32 chunks.
        assert len(chat.chunks(text_id)) < 32, "the reply was typed to the end"
    # A CANCEL gets no answer of its own when it worked.
    assert not any(chat.finals(cancel_id) for cancel_id in cancels), chat.describe()
    assert chat.finals(after)[0]["message_type"] == "REPLY"


# -- an agent killed mid-message ----------------------------------------------------------------


async def test_agent_killed_mid_message_goes_offline_and_every_message_is_answered(
    stack: Stack, chat: Chat
) -> None:
    victim = await asyncio.to_thread(
        start_demo_agent, stack.processes, stack.server, "typist", "typist-victim"
    )
    # Slow typing: each reply would take several seconds.
    await asyncio.to_thread(stack.server.command, "typist-victim", "pace", "300")
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

    # Sent to the dead agent: refused at once. Sent to anyone: answered by someone alive.
    late = await chat.send_text("are you there?", receiver_id="typist-victim")
    anyone = await chat.send_text("anyone?")
    await chat.all_finals(
        [*text_ids, late, anyone], timeout=DELIVERY_TIMEOUT + AGENT_TIMEOUT + 2 * SLACK
    )
    await chat.exactly_one_final_each([*text_ids, late, anyone])

    for text_id in [*text_ids, late]:
        final = chat.finals(text_id)[0]
        assert final["message_type"] == "ERROR", final
        assert final["error_code"] == "agent_offline", final
    assert chat.finals(anyone)[0]["message_type"] == "REPLY"
    assert chat.routed_to(anyone) in WORKERS
    agents = await asyncio.to_thread(stack.server.agents)
    assert agents["typist-victim"]["is_online"] is False
    assert all(agents[agent_id]["is_online"] for agent_id in WORKERS), agents
