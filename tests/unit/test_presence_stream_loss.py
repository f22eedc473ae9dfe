"""A lost stream is acted on when it is lost, with no sweep: offline at once without a grace,
and after exactly the grace (one timer per loss) otherwise — unless the agent came back."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from agentcomm.core.clock import ManualClock
from agentcomm.core.presence import AgentRegistry
from agentcomm.core.timers import ManualTimers
from agentcomm.protocol.models import AgentInfo
from agentcomm.protocol.vocabulary import AgentState

TIMEOUT = 30.0
GRACE = 3.0


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def timers(clock: ManualClock) -> ManualTimers:
    return ManualTimers(clock)


def registry_with(
    clock: ManualClock, timers: ManualTimers, grace: float
) -> tuple[AgentRegistry, list[list[AgentInfo]]]:
    registry = AgentRegistry(clock, agent_timeout=TIMEOUT, stream_grace=grace, timers=timers)
    deltas: list[list[AgentInfo]] = []
    registry.register("a1", "A1", "s1")
    registry.stream_opened("a1")
    registry.subscribe(deltas.append)
    return registry, deltas


def offline(deltas: list[list[AgentInfo]]) -> list[str]:
    return [info.agent_id for delta in deltas for info in delta if not info.is_online]


def test_without_a_grace_the_offline_delta_comes_with_the_loss(
    clock: ManualClock, timers: ManualTimers
) -> None:
    registry, deltas = registry_with(clock, timers, grace=0)
    registry.stream_closed("a1")
    assert offline(deltas) == ["a1"]
    assert not registry.is_online("a1")
    assert timers.pending == 0
    # The sweep has nothing left to say.
    assert registry.sweep() == []
    assert len(deltas) == 1


def test_with_a_grace_one_timer_ends_it_without_a_sweep(
    clock: ManualClock, timers: ManualTimers
) -> None:
    registry, deltas = registry_with(clock, timers, grace=GRACE)
    registry.stream_closed("a1")
    assert timers.pending == 1
    timers.advance(GRACE - 0.01)
    assert deltas == []
    assert registry.is_online("a1")
    timers.advance(0.01)
    assert offline(deltas) == ["a1"]
    assert registry.sweep() == []
    assert len(deltas) == 1


@pytest.mark.parametrize(
    "comes_back",
    [
        lambda registry: registry.stream_opened("a1"),
        lambda registry: registry.heartbeat("a1", "s1", AgentState.ONLINE, {}),
        lambda registry: registry.register("a1", "A1", "s2"),
    ],
    ids=["stream reopened", "heartbeat", "restarted process registers"],
)
def test_an_agent_back_within_the_grace_stays_online(
    clock: ManualClock, timers: ManualTimers, comes_back: Callable[[AgentRegistry], object]
) -> None:
    registry, deltas = registry_with(clock, timers, grace=GRACE)
    registry.stream_closed("a1")
    timers.advance(GRACE / 2)
    comes_back(registry)
    timers.advance(GRACE)
    assert offline(deltas) == []
    assert registry.is_online("a1")


def test_a_later_loss_gets_its_own_full_grace(clock: ManualClock, timers: ManualTimers) -> None:
    registry, deltas = registry_with(clock, timers, grace=GRACE)
    registry.stream_closed("a1")
    timers.advance(GRACE / 2)
    registry.stream_opened("a1")
    registry.stream_closed("a1")
    timers.advance(GRACE / 2)  # the first loss's timer runs: not this loss's grace
    assert offline(deltas) == []
    timers.advance(GRACE / 2)
    assert offline(deltas) == ["a1"]


def test_an_unregistered_agent_is_not_told_offline_twice(
    clock: ManualClock, timers: ManualTimers
) -> None:
    registry, deltas = registry_with(clock, timers, grace=GRACE)
    registry.stream_closed("a1")
    registry.unregister("a1")
    timers.advance(GRACE)
    assert offline(deltas) == ["a1"]


def test_manual_timers_run_in_due_order_and_skip_cancelled(clock: ManualClock) -> None:
    timers = ManualTimers(clock)
    ran: list[str] = []
    timers.call_later(2, lambda: ran.append("second"))
    timers.call_later(1, lambda: ran.append("first"))
    timers.call_later(1.5, lambda: ran.append("cancelled")).cancel()
    assert timers.advance(0.5) == 0
    assert timers.advance(5) == 2
    assert ran == ["first", "second"]
