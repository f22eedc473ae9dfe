"""Calls between agents without I/O: the call context carried in metadata, the rules that bound
calls (protocol/rules.py), the broker's routing of an agent's TEXT and CANCEL, and the SDK's
bookkeeping of calls (sdk/calls.py) with a publish that only records."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agentcomm.broker.ledger import RoutingLedger
from agentcomm.broker.routing import Router
from agentcomm.protocol.calls import CALL_KEY, CallContext, next_call
from agentcomm.protocol.models import Envelope
from agentcomm.protocol.rules import call_refusal, calls_in_flight_refusal
from agentcomm.protocol.vocabulary import MAX_HOPS, ErrorCode, MessageType
from agentcomm.sdk.calls import Calls
from agentcomm.sdk.errors import AgentOffline, AnswerTimeout, CallRefused, Cancelled
from tests.unit.test_broker_routing import WEB, agent, error_code, from_agent, routed_to, table

# -- the call context ----------------------------------------------------------------------------


def test_a_call_made_for_a_frontends_text_starts_the_tree_there() -> None:
    question = Envelope(
        message_type=MessageType.TEXT, message_id="q-1", sender_id=WEB, conversation_id="c-1"
    )
    first = next_call("planner", question)
    assert (first.origin_message_id, first.origin_sender_id) == ("q-1", WEB)
    assert (first.conversation_id, first.in_answer_to, first.chain) == ("c-1", "q-1", ("planner",))
    asked = Envelope(
        message_type=MessageType.TEXT,
        message_id="call-1",
        sender_id="planner",
        metadata={CALL_KEY: first.to_metadata()},
    )
    second = next_call("echo", asked)
    assert second.origin_message_id == "q-1"
    assert second.in_answer_to == "call-1"
    assert second.chain == ("planner", "echo")
    assert CallContext.from_metadata(asked.metadata) == first


@pytest.mark.parametrize(
    "metadata",
    [None, {}, {CALL_KEY: "x"}, {CALL_KEY: {"asked_by": "a", "chain": "a"}}, {CALL_KEY: {}}],
)
def test_metadata_in_another_shape_is_no_call(metadata: dict[str, Any] | None) -> None:
    assert CallContext.from_metadata(metadata) is None


# -- the rules -----------------------------------------------------------------------------------


def test_asking_oneself_or_an_agent_in_the_chain_is_a_cycle() -> None:
    assert call_refusal("a", "a", ("a",)) is not None
    refusal = call_refusal("b", "a", ("a", "b"))
    assert refusal is not None
    assert refusal[0] is ErrorCode.CALL_CYCLE
    assert "a → b → a" in refusal[1]
    assert call_refusal("b", "c", ("a", "b")) is None
    assert call_refusal("b", None, ("a", "b")) is None


def test_a_chain_longer_than_max_hops_is_refused() -> None:
    chain = tuple(f"agent-{n}" for n in range(MAX_HOPS + 1))
    refusal = call_refusal(chain[-1], "next", chain)
    assert refusal is not None
    assert refusal[0] is ErrorCode.HOP_LIMIT
    assert call_refusal(chain[-2], "next", chain[:-1]) is None


def test_calls_in_flight_are_bounded() -> None:
    assert calls_in_flight_refusal("a", 63, 64) is None
    refusal = calls_in_flight_refusal("a", 64, 64)
    assert refusal is not None
    assert "max_calls_in_flight" in refusal


# -- the broker ----------------------------------------------------------------------------------


def call_text(sender: str, receiver: str | None, chain: tuple[str, ...], **fields: Any) -> Envelope:
    context = CallContext(sender, "q-1", "q-1", WEB, None, chain)
    metadata = {CALL_KEY: context.to_metadata(), **fields.pop("metadata", {})}
    return from_agent(sender, MessageType.TEXT, receiver, metadata=metadata, **fields)


def test_the_broker_chooses_by_capability_outside_the_chain() -> None:
    router = Router("broker", RoutingLedger())
    agents = table(
        agent("planner", capabilities={"kind": "echo"}),
        agent("b", capabilities={"kind": "echo"}),
        agent("echo", capabilities={"kind": "echo"}),
    )
    wanted = {"required_capabilities": {"kind": "echo"}}
    asked = call_text("b", None, ("planner", "b"), metadata=wanted)
    for _ in range(3):
        assert routed_to(router.decide(asked, agents)) == "echo"
    only_in_chain = table(agent("planner", capabilities={"kind": "echo"}), agent("b"))
    assert error_code(router.decide(asked, only_in_chain)) == "no_agent_available"


def test_the_broker_refuses_a_named_cycle_and_routes_the_cancel_where_the_text_went() -> None:
    router = Router("broker", RoutingLedger())
    agents = table(agent("a"), agent("b"), agent("c", capabilities={"kind": "c"}))
    assert error_code(router.decide(call_text("b", "a", ("a", "b")), agents)) == "call_cycle"
    assert error_code(router.decide(call_text("a", "a", ("a",)), agents)) == "call_cycle"
    # No call context at all: the sender alone is the chain.
    assert error_code(router.decide(from_agent("a", MessageType.TEXT, "a"), agents)) == (
        "call_cycle"
    )
    asked = call_text("a", None, ("a",), metadata={"required_capabilities": "kind"})
    decision = router.decide(asked, agents)
    router.commit(decision)
    assert routed_to(decision) == "c"
    cancel = from_agent("a", MessageType.CANCEL, None, in_reply_to_message_id=asked.message_id)
    assert routed_to(router.decide(cancel, agents)) == "c"


# -- the SDK's calls -----------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.sent: list[Envelope] = []
        self.arrived = asyncio.Event()

    async def __call__(self, envelope: Envelope) -> None:
        self.sent.append(envelope)
        self.arrived.set()

    async def next(self) -> Envelope:
        async with asyncio.timeout(5):
            while not self.sent:
                self.arrived.clear()
                await self.arrived.wait()
        return self.sent.pop(0)


def answer(to: Envelope, kind: MessageType, **fields: Any) -> Envelope:
    return Envelope(
        message_type=kind,
        sender_id=to.receiver_id or "chosen",
        receiver_id=to.sender_id,
        in_reply_to_message_id=to.message_id,
        **fields,
    )


async def test_ask_stream_puts_chunks_in_order_and_adds_what_only_the_final_has() -> None:
    sent = Recorder()
    calls = Calls(sent, lambda: "me")
    pieces: list[str] = []

    async def consume() -> None:
        async for piece in calls.ask_stream("typist", "hi"):
            pieces.append(piece)

    consumer = asyncio.create_task(consume())
    asked = await sent.next()
    assert asked.hops == 1
    assert asked.metadata is not None
    assert asked.metadata[CALL_KEY]["chain"] == ["me"]
    for seq, delta in ((1, "b"), (0, "a")):
        calls.deliver(answer(asked, MessageType.REPLY_CHUNK, seq=seq, text_delta=delta))
    calls.deliver(answer(asked, MessageType.REPLY, text_payload="abc"))
    async with asyncio.timeout(5):
        await consumer
    assert pieces == ["a", "b", "c"]
    assert calls.in_flight == 0


async def test_errors_are_typed_and_local_refusals_send_nothing() -> None:
    sent = Recorder()
    calls = Calls(sent, lambda: "me", limit=1)
    with pytest.raises(CallRefused) as refused:
        await calls.ask("me", "hi")
    assert refused.value.error_code == "call_cycle"
    assert sent.sent == []
    waiting = asyncio.create_task(calls.ask("gone", "hi"))
    asked = await sent.next()
    with pytest.raises(CallRefused) as too_many:
        await calls.ask("other", "hi")
    assert too_many.value.error_code == "too_many_calls"
    calls.deliver(
        answer(asked, MessageType.ERROR, error_code="agent_offline", text_payload="offline")
    )
    with pytest.raises(AgentOffline):
        await asyncio.wait_for(waiting, 5)


async def test_a_call_cancelled_or_timed_out_sends_a_cancel_to_the_agent_asked() -> None:
    sent = Recorder()
    calls = Calls(sent, lambda: "me")
    waiting = asyncio.create_task(calls.ask("slow", "hi"))
    asked = await sent.next()
    waiting.cancel()
    cancel = await sent.next()
    assert (cancel.message_type, cancel.receiver_id) == (MessageType.CANCEL, "slow")
    assert cancel.in_reply_to_message_id == asked.message_id

    with pytest.raises(AnswerTimeout):
        await calls.ask("slow", "hi", timeout=0.05)
    timed_out = await sent.next()
    assert (await sent.next()).message_type is MessageType.CANCEL
    assert timed_out.message_type is MessageType.TEXT


async def test_calls_left_running_end_with_the_message_they_were_for() -> None:
    sent = Recorder()
    calls = Calls(sent, lambda: "me")
    question = Envelope(message_type=MessageType.TEXT, message_id="q-1", sender_id=WEB)
    left = asyncio.create_task(calls.ask("slow", "hi", answering=question))
    await sent.next()
    assert calls.cancel_under(question) == 1
    assert (await sent.next()).message_type is MessageType.CANCEL
    with pytest.raises(Cancelled):
        await asyncio.wait_for(left, 5)


async def test_the_calls_made_for_a_message_are_listed_for_its_reply() -> None:
    sent = Recorder()
    calls = Calls(sent, lambda: "me")
    question = Envelope(message_type=MessageType.TEXT, message_id="q-1", sender_id=WEB)
    asking = asyncio.create_task(calls.ask("echo", "hi", answering=question))
    asked = await sent.next()
    calls.deliver(answer(asked, MessageType.REPLY, text_payload="echo: hi"))
    assert await asyncio.wait_for(asking, 5) == "echo: hi"
    with pytest.raises(CallRefused):
        await calls.ask("me", "myself?", answering=question)
    [made] = calls.made_for(question) or []
    assert (made["agent_id"], made["text"], made["outcome"]) == ("echo", "hi", "answered")
    assert made["answer"] == "echo: hi"
    assert calls.made_for(question) is None
