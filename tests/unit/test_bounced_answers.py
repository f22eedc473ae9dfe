"""Every accepted TEXT is answered, whatever a broker does with the answer (core/routing/
bounces.py, core/answers.py): answers sent back to the server bare reach the frontend that
asked, once; refusals keep the broker's words; a TEXT without any answer ends in
`ERROR answer_timeout`. Plans are driven by hand, with no bus."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import pytest

from agentcomm.core.answers import AnswerLedger
from agentcomm.core.clock import ManualClock
from agentcomm.core.presence import AgentRegistry
from agentcomm.core.routing import AnswerEvent, Effect, Publish, SendFrame, ServerRouter
from agentcomm.core.sessions import FrontendSessions
from agentcomm.core.streams import ReplyStreams
from agentcomm.protocol.ids import answer_message_id
from agentcomm.protocol.models import Envelope
from tests.unit.test_routing_plans import drive

SERVER_ID = "server_" + "cd" * 16
TAG = "cdcdcdcd"
ANSWER_TIMEOUT = 600.0
NO_AGENT = "No other online agents available to route the message."

Frame = dict[str, Any]


class Link:
    def send_frame(self, frame: bytes) -> None:
        raise AssertionError("a plan never writes to a socket itself")


@dataclass
class Scene:
    router: ServerRouter
    registry: AgentRegistry
    answers: AnswerLedger
    clock: ManualClock
    alice: str
    bob: str
    events: list[AnswerEvent] = field(default_factory=list)

    def run(self, plan: Any) -> list[Effect]:
        return drive(plan)

    def to(self, frontend_id: str, effects: list[Effect]) -> list[Frame]:
        return [
            json.loads(effect.frame)
            for effect in effects
            if isinstance(effect, SendFrame) and effect.frontend_id == frontend_id
        ]

    def accept(self, frontend_id: str, message_id: str = "m1", text: str = "hi") -> None:
        self.run(
            self.router.accept_from_frontend(
                frontend_id,
                Envelope.model_validate(
                    {"message_type": "TEXT", "message_id": message_id, "text_payload": text}
                ),
            )
        )

    def hand_to(self, agent_id: str, frontend_id: str, message_id: str = "m1") -> list[Effect]:
        """The broker routed the frontend's TEXT to `agent_id`, and the server passed it on."""
        return self.run(
            self.router.handle_broker_output(
                envelope(
                    message_type="TEXT",
                    message_id=message_id,
                    sender_id=frontend_id,
                    receiver_id=agent_id,
                    text_payload="hi",
                    routing_status="routed",
                    _client_id=frontend_id,
                )
            )
        )

    def from_broker(self, **fields: Any) -> list[Effect]:
        return self.run(self.router.handle_broker_output(envelope(**fields)))


def envelope(**fields: Any) -> Envelope:
    return Envelope.model_validate(fields)


def bounced(answer_id: str, text: str | None, sender: str = "echo", **fields: Any) -> Frame:
    """An answer as the described system's broker sends it back: an ERROR to "Server" that
    keeps only the answer's id, its sender and its text."""
    out: Frame = {
        "message_type": "ERROR",
        "message_id": answer_id,
        "sender_id": sender,
        "receiver_id": "Server",
        "routing_status": "error",
        "routing_status_message": f"Receiver is not a known agent; cannot route from {sender}.",
        **fields,
    }
    if text is not None:
        out["text_payload"] = text
    return out


def answer(receiver: str, to: str = "m1", text: str = "echo: hi", **fields: Any) -> Frame:
    """An agent's REPLY as a broker routes it, to `receiver` (wherever that is)."""
    return {
        "message_type": "REPLY",
        "sender_id": "echo",
        "receiver_id": receiver,
        "in_reply_to_message_id": to,
        "text_payload": text,
        "routing_status": "routed",
        **fields,
    }


def refused_itself(frontend_id: str, words: str | None) -> Frame:
    """The described system's broker refusing a frontend's TEXT "m1": the message itself,
    sent back, the reason only in routing_status_message."""
    out: Frame = {
        "message_type": "ERROR",
        "message_id": "m1",
        "sender_id": frontend_id,
        "receiver_id": "Server",
        "routing_status": "error",
        "text_payload": "hi",
    }
    if words is not None:
        out["routing_status_message"] = words
    return out


def make_scene(alice_capabilities: dict[str, Any] | None = None) -> Scene:
    clock = ManualClock()
    registry = AgentRegistry(clock, agent_timeout=30, stream_grace=3)
    sessions = FrontendSessions(clock, resume_window=60, server_tag=TAG)
    alice, _ = sessions.register(Link(), "Alice", alice_capabilities or {})
    bob, _ = sessions.register(Link(), "Bob", {})
    answers = AnswerLedger(clock, delivery_timeout=300, answer_timeout=ANSWER_TIMEOUT)
    router = ServerRouter(
        server_id=SERVER_ID,
        registry=registry,
        sessions=sessions,
        answers=answers,
        streams=ReplyStreams(clock),
        clock=clock,
    )
    registry.register("echo", "echo", "session-echo")
    registry.register("other", "other", "session-other")
    made = Scene(router, registry, answers, clock, alice.frontend_id, bob.frontend_id)
    router.observe_answer_events(made.events.append)
    return made


@pytest.fixture
def scene() -> Scene:
    return make_scene()


def finals(frames: list[Frame]) -> list[Frame]:
    return [frame for frame in frames if frame["message_type"] in ("REPLY", "ERROR")]


# -- answers a broker sent back --------------------------------------------------------------


def test_a_reply_the_broker_turned_into_an_error_reaches_the_frontend_as_a_reply(
    scene: Scene,
) -> None:
    scene.accept(scene.alice)
    scene.hand_to("echo", scene.alice)
    reply_id = answer_message_id(scene.alice, "m1")
    effects = scene.from_broker(**bounced(reply_id, "echo: hi"))
    [reply] = scene.to(scene.alice, effects)
    assert (reply["message_type"], reply["message_id"], reply["text_payload"]) == (
        "REPLY",
        reply_id,
        "echo: hi",
    )
    assert (reply["sender_id"], reply["receiver_id"], reply["in_reply_to_message_id"]) == (
        "echo",
        scene.alice,
        "m1",
    )
    assert reply["routing_status"] == "routed"
    assert "send_timestamp" in reply
    assert not {"error_code", "routing_status_message", "_client_id"} & reply.keys()
    assert scene.to(scene.bob, effects) == []
    assert not any(isinstance(effect, Publish) for effect in effects)  # not to the agent
    assert scene.events == [AnswerEvent.BOUNCE_DELIVERED]
    # Once: a copy that comes back again is the second final answer.
    assert scene.to(scene.alice, scene.from_broker(**bounced(reply_id, "echo: hi"))) == []
    assert scene.answers.awaiting_count() == 0


def test_bounced_chunks_are_dropped_and_the_final_brings_the_whole_text(scene: Scene) -> None:
    scene.accept(scene.alice)
    scene.hand_to("echo", scene.alice)
    stream_id = answer_message_id(scene.alice, "m1")
    for _ in range(3):  # REPLY_CHUNKs: text_delta did not survive the wrapping
        assert scene.to(scene.alice, scene.from_broker(**bounced(stream_id, None))) == []
    [reply] = scene.to(scene.alice, scene.from_broker(**bounced(stream_id, "one two three")))
    assert (reply["message_type"], reply["text_payload"]) == ("REPLY", "one two three")


def test_an_agents_error_bounced_stays_an_error_with_its_code(scene: Scene) -> None:
    scene.accept(scene.alice)
    scene.hand_to("echo", scene.alice)
    error_id = answer_message_id(scene.alice, "m1", error_code="cancelled")
    [error] = scene.to(scene.alice, scene.from_broker(**bounced(error_id, "Stopped.")))
    assert (error["message_type"], error["error_code"], error["text_payload"]) == (
        "ERROR",
        "cancelled",
        "Stopped.",
    )
    assert error["in_reply_to_message_id"] == "m1"


@pytest.mark.parametrize("receiver", ["server", "", "echo", "nobody-by-that-name"])
def test_an_answer_addressed_wrongly_is_matched_by_the_text_it_answers(
    scene: Scene, receiver: str
) -> None:
    scene.accept(scene.alice)
    scene.hand_to("echo", scene.alice)
    effects = scene.from_broker(**answer(receiver, message_id="r-plain"))
    [reply] = scene.to(scene.alice, effects)
    assert (reply["message_type"], reply["message_id"], reply["in_reply_to_message_id"]) == (
        "REPLY",
        "r-plain",
        "m1",
    )


def test_only_the_agent_that_got_the_text_answers_it(scene: Scene) -> None:
    scene.accept(scene.alice)
    scene.hand_to("echo", scene.alice)
    effects = scene.from_broker(**answer("server", sender_id="other"))
    assert scene.to(scene.alice, effects) == []
    assert scene.events == [AnswerEvent.BOUNCE_UNMATCHED]


def test_an_answer_that_passed_through_the_server_is_known_by_its_id(scene: Scene) -> None:
    """A gRPC agent's answers go out through the server: any id it chose can be matched."""
    scene.accept(scene.alice, "m1")
    scene.accept(scene.alice, "m2")
    for text_id in ("m1", "m2"):
        scene.hand_to("echo", scene.alice, text_id)
    for answer in (
        envelope(
            message_type="REPLY",
            message_id="r-own-id",
            receiver_id=scene.alice,
            in_reply_to_message_id="m1",
            text_payload="echo: hi",
        ),
        envelope(
            message_type="ERROR",
            message_id="e-own-id",
            receiver_id=scene.alice,
            in_reply_to_message_id="m2",
            text_payload="Agent echo is paused.",
            error_code="agent_offline",
        ),
    ):
        scene.run(scene.router.accept_from_agent("echo", answer))
    [reply] = scene.to(scene.alice, scene.from_broker(**bounced("r-own-id", "echo: hi")))
    [error] = scene.to(scene.alice, scene.from_broker(**bounced("e-own-id", "paused")))
    assert (reply["message_type"], reply["in_reply_to_message_id"]) == ("REPLY", "m1")
    assert (error["message_type"], error["error_code"], error["in_reply_to_message_id"]) == (
        "ERROR",
        "agent_offline",
        "m2",
    )


def test_an_answer_nothing_matches_goes_to_its_sender_logged_and_counted(
    scene: Scene, caplog: pytest.LogCaptureFixture
) -> None:
    scene.accept(scene.alice)
    scene.hand_to("echo", scene.alice)
    with caplog.at_level(logging.WARNING):
        effects = scene.from_broker(**bounced("f00d" * 8, "echo: who asked?"))
    assert scene.to(scene.alice, effects) == []
    [publish] = [effect for effect in effects if isinstance(effect, Publish)]
    assert publish.queue == "agent_queue_echo"  # as before: an error goes to its sender
    assert scene.events == [AnswerEvent.BOUNCE_UNMATCHED]
    [line] = [r.getMessage() for r in caplog.records if "no TEXT" in r.getMessage()]
    assert "f00d" * 8 in line
    assert "echo" in line


def test_an_answer_to_an_unknown_id_that_matches_nothing_is_refused_to_its_sender_as_before(
    scene: Scene,
) -> None:
    effects = scene.from_broker(**answer("gone-agent", to="t-of-gone-agent"))
    [publish] = effects
    assert isinstance(publish, Publish)
    refusal = json.loads(publish.body)
    assert (publish.queue, refusal["error_code"]) == ("agent_queue_echo", "unknown_receiver")
    assert scene.events == []  # an agent's message, not an answer sent back


def test_two_frontends_with_the_same_message_id_are_never_guessed_between(
    scene: Scene,
) -> None:
    """Nothing private reaches the wrong frontend: an answer that names only a message id
    several frontends used is not delivered to either."""
    scene.accept(scene.alice, "1")
    scene.accept(scene.bob, "1")
    effects = scene.from_broker(**answer("server", to="1"))
    assert scene.to(scene.alice, effects) == scene.to(scene.bob, effects) == []
    assert scene.events == [AnswerEvent.BOUNCE_UNMATCHED]


def test_a_bounced_answer_for_a_frontend_of_another_server_goes_to_that_server(
    scene: Scene,
) -> None:
    elsewhere = "web_0badc0de" + "0" * 24
    answer_id = answer_message_id(elsewhere, "m1")
    [publish] = scene.from_broker(**bounced(answer_id, "echo: hi"))
    assert isinstance(publish, Publish)
    assert publish.queue == "server_queue_0badc0de"
    assert json.loads(publish.body)["message_id"] == answer_id


# -- refusals in the broker's words ----------------------------------------------------------


def test_the_described_brokers_no_agent_refusal_keeps_its_words(scene: Scene) -> None:
    """That broker sends the refused TEXT itself back, saying why only in
    routing_status_message."""
    scene.accept(scene.alice)
    effects = scene.from_broker(**refused_itself(scene.alice, NO_AGENT))
    echo, error = scene.to(scene.alice, effects)
    assert (echo["message_type"], echo["message_id"], echo["routing_status"]) == (
        "TEXT",
        "m1",
        "error",
    )
    assert (echo["error_code"], echo["routing_status_message"]) == ("no_agent_available", NO_AGENT)
    assert (error["message_type"], error["error_code"], error["text_payload"]) == (
        "ERROR",
        "no_agent_available",
        NO_AGENT,
    )
    assert error["in_reply_to_message_id"] == "m1"
    assert error["message_id"] != "m1"
    assert (error["sender_id"], error["receiver_id"]) == ("server", scene.alice)
    assert error["send_timestamp"]
    assert scene.answers.awaiting_count() == 0


def test_a_refusal_in_words_the_server_does_not_know_keeps_them_with_code_internal(
    scene: Scene,
) -> None:
    scene.accept(scene.alice)
    effects = scene.from_broker(
        **refused_itself(scene.alice, "Routing is switched off for maintenance.")
    )
    echo, error = scene.to(scene.alice, effects)
    assert echo["error_code"] == error["error_code"] == "internal"
    assert error["text_payload"] == "Routing is switched off for maintenance."


def test_a_refusal_without_any_words_says_the_broker_could_not_route_it(scene: Scene) -> None:
    scene.accept(scene.alice)
    effects = scene.from_broker(**refused_itself(scene.alice, None))
    _, error = scene.to(scene.alice, effects)
    assert error["text_payload"] == "The broker could not route the message."
    assert "hi" not in error["text_payload"]


def test_an_error_routed_to_a_frontend_without_a_timestamp_gets_one(scene: Scene) -> None:
    scene.accept(scene.alice)
    effects = scene.from_broker(
        message_type="ERROR",
        sender_id="echo",
        receiver_id=scene.alice,
        in_reply_to_message_id="m1",
        text_payload="could not",
        error_code="internal",
        routing_status="routed",
    )
    [error] = scene.to(scene.alice, effects)
    assert error["send_timestamp"].endswith("Z")


# -- an answer in time, or an error saying there was none -------------------------------------


def test_a_text_without_any_answer_ends_in_answer_timeout(scene: Scene) -> None:
    scene.accept(scene.alice)
    scene.hand_to("echo", scene.alice)
    scene.clock.advance(ANSWER_TIMEOUT - 1)
    assert scene.run(scene.router.answer_overdue()) == []
    scene.clock.advance(1)
    effects = scene.run(scene.router.answer_overdue())
    echo, error = scene.to(scene.alice, effects)
    assert (echo["message_id"], echo["routing_status"], echo["error_code"]) == (
        "m1",
        "error",
        "answer_timeout",
    )
    assert echo["routing_status_message"] == error["text_payload"]
    assert (error["message_type"], error["error_code"], error["in_reply_to_message_id"]) == (
        "ERROR",
        "answer_timeout",
        "m1",
    )
    assert "600 s" in error["text_payload"]
    assert scene.events == [AnswerEvent.ANSWER_TIMEOUT]
    # The agent's late answer is a second final answer.
    late = scene.from_broker(**answer(scene.alice, text="sorry, late"))
    assert scene.to(scene.alice, late) == []
    assert scene.run(scene.router.answer_overdue()) == []


def test_a_chunk_or_a_notice_moves_the_deadline(scene: Scene) -> None:
    scene.accept(scene.alice)
    scene.hand_to("echo", scene.alice)
    scene.clock.advance(ANSWER_TIMEOUT - 1)
    scene.from_broker(**answer(scene.alice, text="thinking hard", message_type="SYSTEM"))
    scene.clock.advance(ANSWER_TIMEOUT - 1)
    assert scene.run(scene.router.answer_overdue()) == []
    scene.clock.advance(1)
    assert len(finals(scene.to(scene.alice, scene.run(scene.router.answer_overdue())))) == 1


def test_an_answered_text_has_no_deadline(scene: Scene) -> None:
    scene.accept(scene.alice)
    scene.from_broker(**answer(scene.alice, text="done"))
    scene.clock.advance(ANSWER_TIMEOUT * 2)
    assert scene.run(scene.router.answer_overdue()) == []
    assert scene.answers.awaiting_count() == 0


# -- the delivered echo ----------------------------------------------------------------------


@pytest.mark.parametrize("off", [False, "false", "0", 0, "off"])
def test_a_frontend_can_register_without_the_delivered_echo(off: object) -> None:
    scene = make_scene({"delivered_echo": off})
    for frontend_id in (scene.alice, scene.bob):
        scene.accept(frontend_id)
    alices = scene.to(scene.alice, scene.hand_to("echo", scene.alice))
    assert [frame["routing_status"] for frame in alices] == ["routed"]
    # Bob registered without it and gets every echo.
    bobs = scene.to(scene.bob, scene.hand_to("echo", scene.bob))
    assert [frame["routing_status"] for frame in bobs] == ["routed", "delivered"]
