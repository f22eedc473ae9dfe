"""Routing decisions for single envelopes: every rule of the broker, no I/O."""

from __future__ import annotations

from typing import Any

import pytest

from agentcomm.broker.ledger import RoutingLedger
from agentcomm.broker.routing import Decision, Outcome, Router, reject_undecodable
from agentcomm.protocol.models import AgentInfo, Envelope
from agentcomm.protocol.vocabulary import AgentState, ErrorCode, MessageType, RoutingStatus

WEB = "web_00112233445566778899aabbccddeeff"
OTHER_WEB = "web_ffeeddccbbaa99887766554433221100"
SERVER = "server_abc"
BROKER = "broker_test"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def agent(
    agent_id: str,
    *,
    status: AgentState = AgentState.ONLINE,
    capabilities: dict[str, str] | None = None,
    in_flight: int = 0,
) -> AgentInfo:
    online = status is not AgentState.OFFLINE
    return AgentInfo(
        agent_id=agent_id,
        agent_name=agent_id.title(),
        is_online=online,
        last_seen="2026-01-01T00:00:00.000Z",
        status=status,
        capabilities=capabilities or {},
        in_flight=in_flight,
    )


def table(*agents: AgentInfo) -> dict[str, AgentInfo]:
    return {item.agent_id: item for item in agents}


def text(receiver: str | None = None, **fields: Any) -> Envelope:
    """A frontend TEXT as the server puts it on broker_input_queue."""
    values: dict[str, Any] = {
        "message_type": MessageType.TEXT,
        "sender_id": WEB,
        "receiver_id": receiver,
        "text_payload": "hello",
        "routing_status": RoutingStatus.PENDING,
        "_client_id": WEB,
        "_server_id": SERVER,
    }
    values.update(fields)
    return Envelope.model_validate(values)


def from_agent(
    sender: str, message_type: MessageType, receiver: str | None, **fields: Any
) -> Envelope:
    values: dict[str, Any] = {
        "message_type": message_type,
        "sender_id": sender,
        "receiver_id": receiver,
        "text_payload": "answer",
        "routing_status": RoutingStatus.PENDING,
    }
    values.update(fields)
    return Envelope.model_validate(values)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def router(clock: FakeClock) -> Router:
    return Router(BROKER, RoutingLedger(answer_timeout=60.0, clock=clock))


def routed_to(decision: Decision) -> str:
    assert decision.outcome is Outcome.ROUTED, decision.note
    assert decision.output is not None
    assert decision.output.receiver_id is not None
    return decision.output.receiver_id


def error_code(decision: Decision) -> str | None:
    assert decision.outcome is Outcome.ERROR, decision.note
    assert decision.output is not None
    return decision.output.error_code


def route_and_commit(router: Router, envelope: Envelope, agents: dict[str, AgentInfo]) -> str:
    decision = router.decide(envelope, agents)
    router.commit(decision)
    return routed_to(decision)


# -- the output format -------------------------------------------------------------------------


def test_routed_envelope_is_the_same_message_marked_routed(router: Router) -> None:
    source = text(conversation_id="c1", metadata={"k": "v"}, _hops=3)
    decision = router.decide(source, table(agent("a")))
    assert decision.output is not None
    expected = source.model_copy(
        update={"receiver_id": "a", "routing_status": RoutingStatus.ROUTED, "hops": 4}
    )
    assert decision.output == expected
    assert decision.output.client_id == WEB
    assert decision.output.server_id == SERVER


def test_error_envelope_answers_the_failed_message(router: Router) -> None:
    source = text("ghost", conversation_id="c1", message_id="m-1", _hops=2)
    decision = router.decide(source, table(agent("a")))
    error = decision.output
    assert error is not None
    assert error.message_type is MessageType.ERROR
    assert error.routing_status is RoutingStatus.ERROR
    assert error.error_code == ErrorCode.AGENT_OFFLINE
    assert error.receiver_id == WEB
    assert error.sender_id == BROKER
    assert error.in_reply_to_message_id == "m-1"
    assert error.conversation_id == "c1"
    assert (error.client_id, error.server_id) == (WEB, SERVER)
    assert error.message_id != "m-1"
    assert error.hops == 3
    assert error.text_payload
    assert error.text_payload.endswith(".")
    assert error.send_timestamp


def test_error_goes_to_the_client_id_when_sender_id_is_missing(router: Router) -> None:
    decision = router.decide(text("ghost", sender_id=None), {})
    assert decision.output is not None
    assert decision.output.receiver_id == WEB


def test_message_without_any_sender_is_dropped(router: Router) -> None:
    decision = router.decide(text(sender_id=None, _client_id=None), table(agent("a")))
    assert decision.outcome is Outcome.DROP
    assert decision.output is None


def test_non_chat_type_is_refused(router: Router) -> None:
    envelope = text(message_type=MessageType.AGENT_STATUS_UPDATE)
    assert error_code(router.decide(envelope, table(agent("a")))) == ErrorCode.UNSUPPORTED_TYPE


def test_frontend_may_not_send_replies(router: Router) -> None:
    envelope = text("a", message_type=MessageType.REPLY)
    assert error_code(router.decide(envelope, table(agent("a")))) == ErrorCode.UNSUPPORTED_TYPE


# -- a named receiver --------------------------------------------------------------------------


def test_named_online_agent_gets_it_even_when_busier(router: Router) -> None:
    agents = table(agent("a"), agent("b", status=AgentState.BUSY, in_flight=9))
    assert routed_to(router.decide(text("b"), agents)) == "b"


def test_named_paused_agent_still_gets_it(router: Router) -> None:
    agents = table(agent("a"), agent("p", status=AgentState.PAUSED))
    assert routed_to(router.decide(text("p"), agents)) == "p"


def test_named_offline_agent_is_agent_offline(router: Router) -> None:
    decision = router.decide(text("b"), table(agent("a"), agent("b", status=AgentState.OFFLINE)))
    assert error_code(decision) == ErrorCode.AGENT_OFFLINE
    assert decision.output is not None
    assert "'b' is offline" in (decision.output.text_payload or "")


def test_named_unknown_agent_is_agent_offline_saying_not_registered(router: Router) -> None:
    decision = router.decide(text("nobody"), table(agent("a")))
    assert error_code(decision) == ErrorCode.AGENT_OFFLINE
    assert decision.output is not None
    assert "not registered" in (decision.output.text_payload or "")


def test_stale_table_is_mentioned_in_the_error(router: Router) -> None:
    decision = router.decide(text("nobody"), {}, stale=True)
    assert decision.output is not None
    assert "lost contact with the server" in (decision.output.text_payload or "")


def test_frontend_cannot_address_itself(router: Router) -> None:
    assert error_code(router.decide(text(WEB), table(agent("a")))) == ErrorCode.UNKNOWN_RECEIVER


def test_frontend_cannot_address_another_frontend(router: Router) -> None:
    decision = router.decide(text(OTHER_WEB), table(agent("a")))
    assert error_code(decision) == ErrorCode.UNKNOWN_RECEIVER


# -- choosing an agent -------------------------------------------------------------------------


@pytest.mark.parametrize("receiver", [None, "", "server", "SERVER", "Server"])
def test_no_receiver_lets_the_broker_choose(router: Router, receiver: str | None) -> None:
    assert routed_to(router.decide(text(receiver), table(agent("a")))) == "a"


def test_no_agent_is_no_agent_available(router: Router) -> None:
    decision = router.decide(text(), table(agent("a", status=AgentState.OFFLINE)))
    assert error_code(decision) == ErrorCode.NO_AGENT_AVAILABLE


def test_paused_agents_are_not_chosen(router: Router) -> None:
    agents = table(agent("a", status=AgentState.PAUSED))
    assert error_code(router.decide(text(), agents)) == ErrorCode.NO_AGENT_AVAILABLE


def test_required_capabilities_pick_the_capable_agent(router: Router) -> None:
    agents = table(agent("a"), agent("coder", capabilities={"lang": "python"}, in_flight=4))
    for shape in (["lang"], "lang", {"lang": "python"}):
        envelope = text(metadata={"required_capabilities": shape})
        assert routed_to(router.decide(envelope, agents)) == "coder"


def test_missing_capabilities_are_no_agent_available_naming_them(router: Router) -> None:
    envelope = text(metadata={"required_capabilities": {"lang": "rust"}})
    decision = router.decide(envelope, table(agent("coder", capabilities={"lang": "python"})))
    assert error_code(decision) == ErrorCode.NO_AGENT_AVAILABLE
    assert decision.output is not None
    assert "lang=rust" in (decision.output.text_payload or "")


def test_unreadable_capabilities_are_invalid_message(router: Router) -> None:
    envelope = text(metadata={"required_capabilities": 7})
    assert error_code(router.decide(envelope, table(agent("a")))) == ErrorCode.INVALID_MESSAGE


def test_conversation_sticks_to_the_agent_that_served_it(router: Router) -> None:
    agents = table(agent("a"), agent("b"))
    first = route_and_commit(router, text(conversation_id="c1"), agents)
    # The first agent now has one unanswered message, the other none: stickiness still wins.
    assert route_and_commit(router, text(conversation_id="c1"), agents) == first
    other = route_and_commit(router, text(conversation_id="c2"), agents)
    assert other != first


def test_conversation_moves_when_its_agent_goes_offline(router: Router) -> None:
    agents = table(agent("a"), agent("b"))
    first = route_and_commit(router, text(conversation_id="c1"), agents)
    agents[first] = agent(first, status=AgentState.OFFLINE)
    moved = route_and_commit(router, text(conversation_id="c1"), agents)
    assert moved != first
    agents[first] = agent(first)
    assert route_and_commit(router, text(conversation_id="c1"), agents) == moved


def test_named_receiver_also_pins_the_conversation(router: Router) -> None:
    agents = table(agent("a"), agent("b"))
    route_and_commit(router, text("b", conversation_id="c1"), agents)
    assert route_and_commit(router, text(conversation_id="c1"), agents) == "b"


def test_least_busy_uses_what_is_unanswered(router: Router) -> None:
    agents = table(agent("a"), agent("b"))
    first = text()
    assert route_and_commit(router, first, agents) == "a"
    assert route_and_commit(router, text(), agents) == "b"
    # "a" answers: it is now the least busy one.
    reply = from_agent("a", MessageType.REPLY, WEB, in_reply_to_message_id=first.message_id)
    route_and_commit(router, reply, agents)
    assert route_and_commit(router, text(), agents) == "a"


def test_ties_go_round_robin(router: Router) -> None:
    agents = table(agent("a"), agent("b"), agent("c"))
    picks = []
    for _ in range(6):
        envelope = text()
        picks.append(route_and_commit(router, envelope, agents))
        # Answer at once, so that every agent is equally idle again.
        reply = from_agent(
            picks[-1], MessageType.REPLY, WEB, in_reply_to_message_id=envelope.message_id
        )
        route_and_commit(router, reply, agents)
    assert picks == ["a", "b", "c", "a", "b", "c"]


def test_reported_in_flight_counts(router: Router) -> None:
    agents = table(agent("a", in_flight=2), agent("b", in_flight=1))
    assert routed_to(router.decide(text(), agents)) == "b"


def test_nothing_is_recorded_before_commit(router: Router) -> None:
    agents = table(agent("a"), agent("b"))
    router.decide(text(conversation_id="c1"), agents)
    assert router.ledger.unanswered("a") == 0
    assert router.ledger.agent_for_conversation("c1") is None
    assert routed_to(router.decide(text(), agents)) == "a"


def test_errors_do_not_count_as_load(router: Router) -> None:
    router.commit(router.decide(text("ghost"), table(agent("a"))))
    assert len(router.ledger) == 0


# -- CANCEL ------------------------------------------------------------------------------------


def test_cancel_goes_to_the_agent_that_got_the_text(router: Router) -> None:
    agents = table(agent("a"), agent("b"))
    original = text()
    target = route_and_commit(router, original, agents)
    cancel = text(message_type=MessageType.CANCEL, in_reply_to_message_id=original.message_id)
    assert route_and_commit(router, cancel, agents) == target
    # A CANCEL is not work of its own.
    assert router.ledger.unanswered(target) == 1


def test_cancel_for_an_unknown_message_is_unknown_receiver(router: Router) -> None:
    cancel = text(message_type=MessageType.CANCEL, in_reply_to_message_id="nope")
    assert error_code(router.decide(cancel, table(agent("a")))) == ErrorCode.UNKNOWN_RECEIVER


def test_cancel_after_the_answer_is_unknown_receiver(router: Router) -> None:
    agents = table(agent("a"))
    original = text()
    route_and_commit(router, original, agents)
    reply = from_agent("a", MessageType.REPLY, WEB, in_reply_to_message_id=original.message_id)
    route_and_commit(router, reply, agents)
    cancel = text(message_type=MessageType.CANCEL, in_reply_to_message_id=original.message_id)
    assert error_code(router.decide(cancel, agents)) == ErrorCode.UNKNOWN_RECEIVER


def test_cancel_for_an_agent_gone_offline_is_agent_offline(router: Router) -> None:
    agents = table(agent("a"))
    original = text()
    route_and_commit(router, original, agents)
    agents["a"] = agent("a", status=AgentState.OFFLINE)
    cancel = text(message_type=MessageType.CANCEL, in_reply_to_message_id=original.message_id)
    assert error_code(router.decide(cancel, agents)) == ErrorCode.AGENT_OFFLINE


def test_cancel_naming_its_agent_goes_there(router: Router) -> None:
    cancel = text("b", message_type=MessageType.CANCEL, in_reply_to_message_id="x")
    assert routed_to(router.decide(cancel, table(agent("a"), agent("b")))) == "b"


# -- messages from agents ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "message_type",
    [MessageType.REPLY, MessageType.REPLY_CHUNK, MessageType.SYSTEM, MessageType.ERROR],
)
def test_agent_message_for_a_frontend_goes_to_that_frontend(
    router: Router, message_type: MessageType
) -> None:
    # The conversation is pinned to "b" and "b" is idle: neither may pull the reply away.
    agents = table(agent("a"), agent("b"))
    route_and_commit(router, text("b", conversation_id="c1"), agents)
    source = from_agent("a", message_type, WEB, conversation_id="c1", seq=0, _hops=1)
    decision = router.decide(source, agents)
    assert routed_to(decision) == WEB
    assert decision.output == source.model_copy(
        update={"routing_status": RoutingStatus.ROUTED, "hops": 2}
    )


def test_reply_for_a_frontend_is_routed_even_with_no_agent_online(router: Router) -> None:
    assert routed_to(router.decide(from_agent("a", MessageType.REPLY, WEB), {})) == WEB


def test_agent_message_for_another_agent_goes_there(router: Router) -> None:
    agents = table(agent("a"), agent("b"))
    assert routed_to(router.decide(from_agent("a", MessageType.SYSTEM, "b"), agents)) == "b"


def test_agent_text_for_another_agent_counts_as_its_work(router: Router) -> None:
    agents = table(agent("a"), agent("b"))
    assert route_and_commit(router, from_agent("a", MessageType.TEXT, "b"), agents) == "b"
    assert router.ledger.unanswered("b") == 1


def test_agent_message_for_an_offline_agent_is_an_error_to_the_sender(router: Router) -> None:
    agents = table(agent("a"), agent("b", status=AgentState.OFFLINE))
    decision = router.decide(from_agent("a", MessageType.REPLY, "b"), agents)
    assert error_code(decision) == ErrorCode.AGENT_OFFLINE
    assert decision.output is not None
    assert decision.output.receiver_id == "a"


@pytest.mark.parametrize("receiver", [None, "", "server"])
def test_agent_message_without_receiver_is_refused(router: Router, receiver: str | None) -> None:
    decision = router.decide(from_agent("a", MessageType.REPLY, receiver), table(agent("a")))
    assert error_code(decision) == ErrorCode.UNKNOWN_RECEIVER
    assert decision.output is not None
    assert decision.output.receiver_id == "a"


def test_agent_message_to_itself_is_refused(router: Router) -> None:
    decision = router.decide(from_agent("a", MessageType.SYSTEM, "a"), table(agent("a")))
    assert error_code(decision) == ErrorCode.UNKNOWN_RECEIVER


def test_chunks_and_foreign_replies_do_not_close_a_text(router: Router) -> None:
    agents = table(agent("a"), agent("b"))
    original = text("a")
    route_and_commit(router, original, agents)
    for envelope in (
        from_agent("a", MessageType.REPLY_CHUNK, WEB, in_reply_to_message_id=original.message_id),
        from_agent("b", MessageType.REPLY, WEB, in_reply_to_message_id=original.message_id),
        from_agent("a", MessageType.SYSTEM, WEB, in_reply_to_message_id=original.message_id),
    ):
        route_and_commit(router, envelope, agents)
    assert router.ledger.unanswered("a") == 1


def test_an_agent_error_closes_its_text(router: Router) -> None:
    agents = table(agent("a"))
    original = text()
    route_and_commit(router, original, agents)
    error = from_agent("a", MessageType.ERROR, WEB, in_reply_to_message_id=original.message_id)
    route_and_commit(router, error, agents)
    assert router.ledger.unanswered("a") == 0


def test_an_undeliverable_final_reply_still_closes_its_text(router: Router) -> None:
    agents = table(agent("a"))
    original = text()
    route_and_commit(router, original, agents)
    reply = from_agent("a", MessageType.REPLY, None, in_reply_to_message_id=original.message_id)
    router.commit(router.decide(reply, agents))
    assert router.ledger.unanswered("a") == 0


def test_agent_going_offline_drops_its_load(router: Router) -> None:
    agents = table(agent("a"))
    route_and_commit(router, text(), agents)
    router.agent_went_offline("a")
    assert router.ledger.unanswered("a") == 0


# -- hop limit ---------------------------------------------------------------------------------


def test_sixteen_hops_still_route(router: Router) -> None:
    decision = router.decide(text(_hops=16), table(agent("a")))
    assert routed_to(decision) == "a"


@pytest.mark.parametrize("hops", [17, 100])
def test_more_than_sixteen_hops_is_hop_limit(router: Router, hops: int) -> None:
    decision = router.decide(text(_hops=hops), table(agent("a")))
    assert error_code(decision) == ErrorCode.HOP_LIMIT
    assert decision.output is not None
    assert decision.output.receiver_id == WEB


def test_agent_reply_over_the_hop_limit_is_an_error_to_the_agent(router: Router) -> None:
    decision = router.decide(from_agent("a", MessageType.REPLY, WEB, _hops=17), {})
    assert error_code(decision) == ErrorCode.HOP_LIMIT
    assert decision.output is not None
    assert decision.output.receiver_id == "a"


def test_looping_error_is_dropped_not_answered(router: Router) -> None:
    decision = router.decide(from_agent("a", MessageType.ERROR, "b", _hops=17), {})
    assert decision.outcome is Outcome.DROP


# -- undecodable messages ----------------------------------------------------------------------


def test_undecodable_message_with_a_sender_gets_an_error() -> None:
    data = {"message_type": "NOPE", "sender_id": WEB, "message_id": "m1", "_server_id": SERVER}
    error = reject_undecodable(data, ErrorCode.UNSUPPORTED_TYPE, "Unknown type.", BROKER)
    assert error is not None
    assert (error.receiver_id, error.in_reply_to_message_id) == (WEB, "m1")
    assert error.error_code == ErrorCode.UNSUPPORTED_TYPE
    assert error.server_id == SERVER


@pytest.mark.parametrize(
    "data",
    [{}, {"sender_id": 5}, {"sender_id": ""}, {"sender_id": "x" * 200}],
)
def test_undecodable_message_without_a_usable_sender_is_dropped(data: dict[str, Any]) -> None:
    assert reject_undecodable(data, ErrorCode.INVALID_MESSAGE, "Bad.", BROKER) is None


def test_undecodable_message_with_a_bad_message_id_still_gets_an_error() -> None:
    data = {"sender_id": WEB, "message_id": "has spaces in it"}
    error = reject_undecodable(data, ErrorCode.INVALID_MESSAGE, "Bad.", BROKER)
    assert error is not None
    assert error.receiver_id == WEB
