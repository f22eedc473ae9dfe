"""Chunks of an answer whose route is known go straight to their frontend; everything else an
agent sends still goes by the broker. Plans driven by hand, no bus."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agentcomm.core.answers import AnswerLedger
from agentcomm.core.clock import ManualClock
from agentcomm.core.presence import AgentRegistry
from agentcomm.core.routing import Publish, SendFrame, ServerRouter
from agentcomm.core.sessions import FrontendSessions
from agentcomm.core.streams import ReplyStreams
from agentcomm.protocol.models import Envelope
from tests.unit.test_routing_plans import SERVER_ID, Link, drive, frames


@pytest.fixture
def routed() -> tuple[ServerRouter, str]:
    """A router whose frontend (streaming) had its TEXT `m1` handed to agent `typist`."""
    clock = ManualClock()
    registry = AgentRegistry(clock, agent_timeout=30, stream_grace=3)
    registry.register("typist", "typist", "session-typist")
    registry.register("other", "other", "session-other")
    sessions = FrontendSessions(clock, resume_window=60, server_tag="cdcdcdcd")
    session, _ = sessions.register(Link(), "Alice", {"stream": True})
    router = ServerRouter(
        server_id=SERVER_ID,
        registry=registry,
        sessions=sessions,
        answers=AnswerLedger(clock, delivery_timeout=300),
        streams=ReplyStreams(clock),
        clock=clock,
    )
    alice = session.frontend_id
    text = Envelope.model_validate(
        {
            "message_type": "TEXT",
            "message_id": "m1",
            "text_payload": "hi",
            "sender_id": alice,
            "receiver_id": "typist",
            "routing_status": "routed",
            "_client_id": alice,
        }
    )
    effects = drive(router.handle_broker_output(text))
    assert any(isinstance(e, Publish) and e.queue == "agent_queue_typist" for e in effects)
    return router, alice


def answer(kind: str, alice: str, sender: str, **fields: Any) -> Envelope:
    return Envelope.model_validate(
        {
            "message_type": kind,
            "message_id": "reply-1",
            "sender_id": sender,
            "receiver_id": alice,
            "in_reply_to_message_id": "m1",
            **fields,
        }
    )


def test_a_chunk_of_a_routed_answer_goes_straight_to_its_frontend(routed: Any) -> None:
    router, alice = routed
    effects = drive(
        router.accept_from_agent(
            "typist", answer("REPLY_CHUNK", alice, "typist", seq=0, text_delta="a")
        )
    )
    assert [type(e) for e in effects] == [SendFrame]
    (chunk,) = frames(effects)
    assert (chunk["message_type"], chunk["seq"], chunk["text_delta"]) == ("REPLY_CHUNK", 0, "a")
    assert "_client_id" not in chunk


def test_chunks_out_of_order_are_still_put_back_in_order(routed: Any) -> None:
    router, alice = routed
    late = drive(
        router.accept_from_agent(
            "typist", answer("REPLY_CHUNK", alice, "typist", seq=1, text_delta="b")
        )
    )
    assert late == []
    effects = drive(
        router.accept_from_agent(
            "typist", answer("REPLY_CHUNK", alice, "typist", seq=0, text_delta="a")
        )
    )
    assert [c["seq"] for c in frames(effects)] == [0, 1]


def test_the_final_reply_still_goes_by_the_bus(routed: Any) -> None:
    router, alice = routed
    effects = drive(
        router.accept_from_agent("typist", answer("REPLY", alice, "typist", text_payload="ab"))
    )
    assert [type(e) for e in effects] == [Publish]
    assert effects[0].queue == "broker_input_queue"


def test_a_chunk_from_an_agent_the_text_did_not_go_to_goes_by_the_broker(routed: Any) -> None:
    router, alice = routed
    effects = drive(
        router.accept_from_agent(
            "other", answer("REPLY_CHUNK", alice, "other", seq=0, text_delta="x")
        )
    )
    assert [type(e) for e in effects] == [Publish]
    assert json.loads(effects[0].body)["sender_id"] == "other"


def test_a_chunk_for_a_text_this_hub_never_routed_goes_by_the_broker(routed: Any) -> None:
    router, alice = routed
    chunk = answer("REPLY_CHUNK", alice, "typist", seq=0, text_delta="x")
    effects = drive(
        router.accept_from_agent(
            "typist", chunk.model_copy(update={"in_reply_to_message_id": "unknown"})
        )
    )
    assert [type(e) for e in effects] == [Publish]
