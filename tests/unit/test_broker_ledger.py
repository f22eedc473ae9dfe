"""The broker's ledger: unanswered counts, conversations, expiry and bounds."""

from __future__ import annotations

from agentcomm.broker.ledger import RoutingLedger


class FakeClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_assign_and_answer_track_unanswered_per_agent() -> None:
    ledger = RoutingLedger()
    ledger.assign("m1", "a", None)
    ledger.assign("m2", "a", None)
    ledger.assign("m3", "b", None)
    assert (ledger.unanswered("a"), ledger.unanswered("b"), ledger.unanswered("c")) == (2, 1, 0)
    ledger.answered("m1")
    ledger.answered("m1")
    ledger.answered("unknown")
    assert ledger.unanswered("a") == 1
    assert ledger.agent_for_message("m2") == "a"
    assert ledger.agent_for_message("m1") is None
    assert ledger.last_pick == "b"


def test_reassigning_a_message_moves_its_count() -> None:
    ledger = RoutingLedger()
    ledger.assign("m1", "a", None)
    ledger.assign("m1", "b", None)
    assert (ledger.unanswered("a"), ledger.unanswered("b")) == (0, 1)


def test_unanswered_messages_expire() -> None:
    clock = FakeClock()
    ledger = RoutingLedger(answer_timeout=10.0, clock=clock)
    ledger.assign("m1", "a", "c1")
    clock.now += 5
    ledger.assign("m2", "a", None)
    clock.now += 6
    assert ledger.unanswered("a") == 1
    assert ledger.agent_for_message("m1") is None
    # Stickiness is not load: it outlives the expiry of the message that set it.
    assert ledger.agent_for_conversation("c1") == "a"
    clock.now += 10
    assert ledger.unanswered("a") == 0
    assert len(ledger) == 0


def test_ledger_is_bounded() -> None:
    ledger = RoutingLedger(max_entries=3)
    for index in range(10):
        ledger.assign(f"m{index}", "a", f"c{index}")
    assert len(ledger) == 3
    assert ledger.unanswered("a") == 3
    assert ledger.agent_for_conversation("c0") is None
    assert ledger.agent_for_conversation("c9") == "a"


def test_conversation_follows_the_latest_agent() -> None:
    ledger = RoutingLedger()
    ledger.assign("m1", "a", "c1")
    ledger.assign("m2", "b", "c1")
    assert ledger.agent_for_conversation("c1") == "b"
    assert ledger.agent_for_conversation(None) is None


def test_forget_agent_drops_only_its_messages() -> None:
    ledger = RoutingLedger()
    ledger.assign("m1", "a", None)
    ledger.assign("m2", "b", None)
    ledger.forget_agent("a")
    assert (ledger.unanswered("a"), ledger.unanswered("b")) == (0, 1)
