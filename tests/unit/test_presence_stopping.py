"""A stopping server closes every agent stream itself: that says nothing about its agents, so
neither the close nor a grace that runs out during the stop takes an agent offline (messages
still being handled for them must wait in their queues for the next server, not be refused)."""

from __future__ import annotations

import pytest

from agentcomm.core.clock import ManualClock
from agentcomm.core.presence import AgentRegistry
from agentcomm.core.timers import ManualTimers
from agentcomm.protocol.models import AgentInfo


@pytest.mark.parametrize("grace", [0.0, 1.0])
def test_streams_closed_by_a_stopping_server_take_no_agent_offline(grace: float) -> None:
    clock = ManualClock()
    timers = ManualTimers(clock)
    registry = AgentRegistry(clock, agent_timeout=30, stream_grace=grace, timers=timers)
    registry.register("a1", "A1", "s1")
    registry.stream_opened("a1")
    deltas: list[list[AgentInfo]] = []
    registry.subscribe(deltas.append)

    registry.stop_judging_streams()
    registry.stream_closed("a1")
    timers.advance(grace + 1)

    assert registry.is_online("a1")
    assert deltas == []


def test_a_grace_that_began_before_the_stop_ends_quietly_during_it() -> None:
    clock = ManualClock()
    timers = ManualTimers(clock)
    registry = AgentRegistry(clock, agent_timeout=30, stream_grace=1.0, timers=timers)
    registry.register("a1", "A1", "s1")
    registry.stream_opened("a1")
    registry.stream_closed("a1")

    registry.stop_judging_streams()
    timers.advance(2.0)

    assert registry.is_online("a1")
