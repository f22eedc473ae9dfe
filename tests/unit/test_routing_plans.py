"""The server's routing decisions driven by hand, with no bus and no server: each plan yields
its effects, and the outcome of a publish is whatever the test sends back into it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agentcomm.core.answers import AnswerLedger
from agentcomm.core.clock import ManualClock
from agentcomm.core.presence import AgentRegistry
from agentcomm.core.routing import (
    BusDown,
    Effect,
    Plan,
    Publish,
    PublishFailed,
    QueueMissing,
    SendFrame,
    ServerRouter,
)
from agentcomm.core.sessions import FrontendSessions
from agentcomm.core.streams import ReplyStreams
from agentcomm.protocol.errors import ProtocolError
from agentcomm.protocol.models import Envelope

SERVER_ID = "server_" + "cd" * 16


class Link:
    def send_frame(self, frame: bytes) -> None:
        raise AssertionError("a plan never writes to a socket itself")


@pytest.fixture
def parts() -> tuple[ServerRouter, AgentRegistry, str]:
    clock = ManualClock()
    registry = AgentRegistry(clock, agent_timeout=30, stream_grace=3)
    sessions = FrontendSessions(clock, resume_window=60, server_tag="cdcdcdcd")
    session, _ = sessions.register(Link(), "Alice", {})
    router = ServerRouter(
        server_id=SERVER_ID,
        registry=registry,
        sessions=sessions,
        answers=AnswerLedger(clock, delivery_timeout=300),
        streams=ReplyStreams(clock),
        clock=clock,
    )
    return router, registry, session.frontend_id


def drive(plan: Plan[Any], outcomes: dict[str, PublishFailed] | None = None) -> list[Effect]:
    """Runs `plan` to its end: every publish succeeds unless `outcomes` names its queue."""
    outcomes = outcomes or {}
    effects: list[Effect] = []
    try:
        effect = next(plan)
        while True:
            effects.append(effect)
            failure = outcomes.get(effect.queue) if isinstance(effect, Publish) else None
            effect = plan.throw(failure) if failure is not None else next(plan)
    except StopIteration:
        return effects


def frames(effects: list[Effect]) -> list[dict[str, Any]]:
    return [json.loads(effect.frame) for effect in effects if isinstance(effect, SendFrame)]


def text(**fields: Any) -> Envelope:
    return Envelope.model_validate({"message_type": "TEXT", "text_payload": "hi", **fields})


def test_a_frontend_text_is_published_for_the_broker_then_echoed_pending(parts: Any) -> None:
    router, _, alice = parts
    effects = drive(router.accept_from_frontend(alice, text(message_id="m1", receiver_id="echo")))
    publish, echo = effects
    assert isinstance(publish, Publish)
    assert (publish.queue, publish.message_id, publish.mandatory) == (
        "broker_input_queue",
        "m1",
        True,
    )
    sent = json.loads(publish.body)
    assert (sent["sender_id"], sent["_client_id"], sent["_server_id"]) == (alice, alice, SERVER_ID)
    assert isinstance(echo, SendFrame)
    assert echo.frontend_id == alice
    assert json.loads(echo.frame)["routing_status"] == "pending"


def test_a_bus_that_is_down_gets_the_sender_an_error_not_silence(parts: Any) -> None:
    router, _, alice = parts
    plan = router.accept_from_frontend(alice, text(message_id="m1"))
    effects = drive(plan, {"broker_input_queue": BusDown("no confirm")})
    echo, error = frames(effects)
    assert (echo["routing_status"], echo["error_code"]) == ("error", "bus_unavailable")
    assert (error["message_type"], error["error_code"], error["in_reply_to_message_id"]) == (
        "ERROR",
        "bus_unavailable",
        "m1",
    )


def test_a_frontend_cannot_address_another_frontend(parts: Any) -> None:
    router, _, alice = parts
    with pytest.raises(ProtocolError) as refused:
        drive(router.accept_from_frontend(alice, text(receiver_id="web_someone")))
    assert refused.value.code.value == "unknown_receiver"


def test_a_message_for_an_agent_without_a_queue_is_refused_agent_offline(parts: Any) -> None:
    router, registry, alice = parts
    registry.register("echo", "echo", "session-echo")
    routed = text(
        message_id="m2",
        sender_id=alice,
        receiver_id="echo",
        routing_status="routed",
        _client_id=alice,
    )
    effects = drive(
        router.handle_broker_output(routed), {"agent_queue_echo": QueueMissing("returned")}
    )
    assert [type(effect) for effect in effects] == [SendFrame, Publish, SendFrame, SendFrame]
    routed_echo, failed_echo, error = frames(effects)
    assert routed_echo["routing_status"] == "routed"
    assert (failed_echo["routing_status"], failed_echo["error_code"]) == ("error", "agent_offline")
    assert (error["message_type"], error["sender_id"]) == ("ERROR", "server")


def test_a_publish_failure_the_decision_does_not_handle_is_let_through(parts: Any) -> None:
    router, registry, alice = parts
    registry.register("echo", "echo", "session-echo")
    routed = text(message_id="m3", sender_id=alice, receiver_id="echo", routing_status="routed")
    # The bus message must not be acked: the failure leaves the plan as it came.
    with pytest.raises(BusDown):
        drive(router.handle_broker_output(routed), {"agent_queue_echo": BusDown("down")})
