"""The presence state machine (PROTOCOL §5) on a manual clock: no waiting, exact timing."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from agentcomm.core.clock import ManualClock
from agentcomm.core.errors import AgentIdTaken, NotYourAgent, UnknownAgent
from agentcomm.core.presence import (
    FORGET_OFFLINE_AFTER_SECONDS,
    AgentRegistry,
    parse_reported_status,
)
from agentcomm.protocol.models import AgentInfo
from agentcomm.protocol.vocabulary import AgentState

TIMEOUT = 30.0
GRACE = 3.0


class Deltas:
    """A presence listener that keeps every delta it gets."""

    def __init__(self) -> None:
        self.received: list[list[AgentInfo]] = []

    def __call__(self, delta: list[AgentInfo]) -> None:
        self.received.append(delta)

    def take(self) -> list[list[tuple[str, bool, str]]]:
        taken = [
            [(info.agent_id, info.is_online, info.status.value) for info in delta]
            for delta in self.received
        ]
        self.received.clear()
        return taken


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime(2026, 3, 1, 12, 0, tzinfo=UTC))


@pytest.fixture
def registry(clock: ManualClock) -> AgentRegistry:
    return AgentRegistry(clock, agent_timeout=TIMEOUT, stream_grace=GRACE)


@pytest.fixture
def deltas(registry: AgentRegistry) -> Deltas:
    listener = Deltas()
    registry.subscribe(listener)
    return listener


def register(registry: AgentRegistry, agent_id: str = "a1", session: str = "s1") -> None:
    registry.register(agent_id, agent_id.upper(), session, capabilities={"k": "v"})


ONLINE = [[("a1", True, "online")]]
OFFLINE = [[("a1", False, "offline")]]


# -- registration ---------------------------------------------------------------------------


def test_registration_is_one_online_delta(registry: AgentRegistry, deltas: Deltas) -> None:
    register(registry)
    assert deltas.take() == ONLINE
    info = registry.snapshot()[0]
    assert info.agent_name == "A1"
    assert info.capabilities == {"k": "v"}
    assert info.last_seen == "2026-03-01T12:00:00.000Z"


def test_same_registration_again_is_no_delta(registry: AgentRegistry, deltas: Deltas) -> None:
    register(registry)
    deltas.take()
    register(registry)
    assert deltas.take() == []


def test_changed_registration_is_a_delta(registry: AgentRegistry, deltas: Deltas) -> None:
    register(registry)
    deltas.take()
    registry.register("a1", "Renamed", "s1")
    assert [[info.agent_name for info in delta] for delta in deltas.received] == [["Renamed"]]


def test_empty_name_falls_back_to_the_id(registry: AgentRegistry) -> None:
    registry.register("a1", "", "s1")
    assert registry.snapshot()[0].agent_name == "a1"


def test_live_id_of_another_session_is_refused(registry: AgentRegistry, deltas: Deltas) -> None:
    register(registry, session="s1")
    deltas.take()
    with pytest.raises(AgentIdTaken):
        register(registry, session="s2")
    assert deltas.take() == []
    record = registry.get("a1")
    assert record is not None
    assert record.session == "s1"


def test_id_whose_streams_broke_may_be_taken_over_by_a_restarted_process(
    registry: AgentRegistry, deltas: Deltas
) -> None:
    register(registry, session="crashed")
    registry.stream_opened("a1")
    registry.stream_closed("a1")  # the process died; the grace has not run out yet
    deltas.take()
    register(registry, session="restarted")
    record = registry.get("a1")
    assert record is not None
    assert (record.session, record.online) == ("restarted", True)
    # With a stream open again, the id is held as before.
    registry.stream_opened("a1")
    with pytest.raises(AgentIdTaken):
        register(registry, session="crashed")


def test_offline_id_may_be_taken_by_another_session(
    registry: AgentRegistry, deltas: Deltas
) -> None:
    register(registry, session="s1")
    registry.unregister("a1")
    deltas.take()
    register(registry, session="s2")
    assert deltas.take() == ONLINE
    record = registry.get("a1")
    assert record is not None
    assert record.session == "s2"


def test_reregistration_keeps_open_streams_of_the_same_session(registry: AgentRegistry) -> None:
    register(registry)
    registry.stream_opened("a1")
    register(registry)
    record = registry.get("a1")
    assert record is not None
    assert record.open_streams == 1


# -- unregistration -------------------------------------------------------------------------


def test_unregister_is_one_offline_delta(registry: AgentRegistry, deltas: Deltas) -> None:
    register(registry)
    deltas.take()
    registry.unregister("a1")
    assert deltas.take() == OFFLINE
    registry.unregister("a1")
    assert deltas.take() == []
    assert not registry.is_online("a1")
    assert registry.online_count() == 0


def test_unregister_unknown_agent(registry: AgentRegistry) -> None:
    with pytest.raises(UnknownAgent):
        registry.unregister("ghost")


def test_unregister_by_another_session_is_refused(registry: AgentRegistry) -> None:
    register(registry, session="s1")
    with pytest.raises(NotYourAgent):
        registry.unregister("a1", session="s2")
    assert registry.is_online("a1")
    registry.unregister("a1", session="s1")
    assert not registry.is_online("a1")


# -- heartbeat timeout ------------------------------------------------------------------------


def test_silent_agent_goes_offline_at_agent_timeout(
    registry: AgentRegistry, deltas: Deltas, clock: ManualClock
) -> None:
    register(registry)
    deltas.take()
    clock.advance(TIMEOUT - 0.01)
    assert registry.sweep() == []
    assert deltas.take() == []
    clock.advance(0.01)
    gone = registry.sweep()
    assert [(info.agent_id, info.is_online) for info in gone] == [("a1", False)]
    assert deltas.take() == OFFLINE
    # Once per transition: later sweeps say nothing more.
    clock.advance(TIMEOUT)
    assert registry.sweep() == []
    assert deltas.take() == []


def test_heartbeats_keep_an_agent_online(
    registry: AgentRegistry, deltas: Deltas, clock: ManualClock
) -> None:
    register(registry)
    deltas.take()
    for _ in range(10):
        clock.advance(TIMEOUT * 0.9)
        registry.heartbeat("a1", None, AgentState.ONLINE, {})
        assert registry.sweep() == []
    assert registry.is_online("a1")
    assert deltas.take() == []
    clock.advance(TIMEOUT)
    registry.sweep()
    assert deltas.take() == OFFLINE


def test_heartbeat_updates_last_seen(registry: AgentRegistry, clock: ManualClock) -> None:
    register(registry)
    clock.advance(5)
    registry.heartbeat("a1", None, AgentState.ONLINE, {})
    assert registry.snapshot()[0].last_seen == "2026-03-01T12:00:05.000Z"


def test_heartbeat_brings_an_offline_agent_back(
    registry: AgentRegistry, deltas: Deltas, clock: ManualClock
) -> None:
    register(registry)
    clock.advance(TIMEOUT)
    registry.sweep()
    deltas.take()
    registry.heartbeat("a1", "s1", AgentState.ONLINE, {})
    assert deltas.take() == ONLINE


def test_heartbeat_status_change_is_a_delta_once(registry: AgentRegistry, deltas: Deltas) -> None:
    register(registry)
    deltas.take()
    registry.heartbeat("a1", None, AgentState.BUSY, {"in_flight": "2"})
    assert deltas.take() == [[("a1", True, "busy")]]
    assert registry.snapshot()[0].in_flight == 2
    registry.heartbeat("a1", None, AgentState.BUSY, {"in_flight": "3"})
    assert deltas.take() == []
    registry.heartbeat("a1", None, AgentState.ONLINE, {})
    assert deltas.take() == ONLINE


def test_heartbeat_of_unknown_agent(registry: AgentRegistry) -> None:
    with pytest.raises(UnknownAgent):
        registry.heartbeat("ghost", None, AgentState.ONLINE, {})


def test_heartbeat_from_another_session_for_a_live_agent_is_refused(
    registry: AgentRegistry,
) -> None:
    register(registry, session="s1")
    with pytest.raises(NotYourAgent):
        registry.heartbeat("a1", "s2", AgentState.ONLINE, {})


def test_heartbeat_from_a_new_session_takes_over_an_offline_agent(
    registry: AgentRegistry, deltas: Deltas
) -> None:
    register(registry, session="s1")
    registry.unregister("a1")
    deltas.take()
    registry.heartbeat("a1", "s2", AgentState.ONLINE, {})
    assert deltas.take() == ONLINE
    record = registry.get("a1")
    assert record is not None
    assert record.session == "s2"


def test_malformed_in_flight_metric_counts_as_zero(registry: AgentRegistry) -> None:
    register(registry)
    registry.heartbeat("a1", None, AgentState.ONLINE, {"in_flight": "many"})
    assert registry.snapshot()[0].in_flight == 0


# -- streams ----------------------------------------------------------------------------------


def test_open_stream_keeps_a_silent_agent_online(
    registry: AgentRegistry, deltas: Deltas, clock: ManualClock
) -> None:
    register(registry)
    registry.stream_opened("a1")
    deltas.take()
    clock.advance(TIMEOUT * 10)
    assert registry.sweep() == []
    assert registry.is_online("a1")
    assert deltas.take() == []


def test_stream_loss_goes_offline_after_the_grace(
    registry: AgentRegistry, deltas: Deltas, clock: ManualClock
) -> None:
    register(registry)
    registry.stream_opened("a1")
    clock.advance(TIMEOUT * 2)
    registry.stream_closed("a1")
    deltas.take()
    clock.advance(GRACE - 0.01)
    assert registry.sweep() == []
    assert registry.is_online("a1")
    clock.advance(0.01)
    assert [info.agent_id for info in registry.sweep()] == ["a1"]
    assert deltas.take() == OFFLINE
    clock.advance(GRACE)
    assert registry.sweep() == []
    assert deltas.take() == []


def test_stream_reopened_within_the_grace_stays_online(
    registry: AgentRegistry, deltas: Deltas, clock: ManualClock
) -> None:
    register(registry)
    registry.stream_opened("a1")
    registry.stream_closed("a1")
    clock.advance(GRACE / 2)
    registry.stream_opened("a1")
    clock.advance(GRACE * 10)
    assert registry.sweep() == []
    assert deltas.take() == ONLINE  # the registration only


def test_losing_one_of_two_streams_is_no_loss(
    registry: AgentRegistry, deltas: Deltas, clock: ManualClock
) -> None:
    register(registry)
    registry.stream_opened("a1")
    registry.stream_opened("a1")
    registry.stream_closed("a1")
    clock.advance(GRACE * 2)
    assert registry.sweep() == []
    assert registry.is_online("a1")
    registry.stream_closed("a1")
    clock.advance(GRACE)
    assert [info.agent_id for info in registry.sweep()] == ["a1"]


def test_heartbeat_after_stream_loss_cancels_the_grace(
    registry: AgentRegistry, deltas: Deltas, clock: ManualClock
) -> None:
    register(registry)
    registry.stream_opened("a1")
    registry.stream_closed("a1")
    registry.heartbeat("a1", None, AgentState.ONLINE, {})
    clock.advance(GRACE * 2)
    assert registry.sweep() == []
    # ... but the heartbeat timeout still applies.
    clock.advance(TIMEOUT)
    assert [info.agent_id for info in registry.sweep()] == ["a1"]


def test_reopened_stream_brings_an_offline_agent_back(
    registry: AgentRegistry, deltas: Deltas, clock: ManualClock
) -> None:
    register(registry)
    clock.advance(TIMEOUT)
    registry.sweep()
    deltas.take()
    registry.stream_opened("a1")
    assert deltas.take() == ONLINE


def test_stream_closed_for_unknown_agent_is_ignored(registry: AgentRegistry) -> None:
    registry.stream_closed("ghost")
    with pytest.raises(UnknownAgent):
        registry.stream_opened("ghost")


# -- reported state and forgetting ---------------------------------------------------------------


def test_reported_state_change_is_a_delta_once(registry: AgentRegistry, deltas: Deltas) -> None:
    register(registry)
    deltas.take()
    registry.set_reported_state("a1", AgentState.PAUSED)
    registry.set_reported_state("a1", AgentState.PAUSED)
    assert deltas.take() == [[("a1", True, "paused")]]


def test_reported_state_of_an_offline_agent_is_no_delta(
    registry: AgentRegistry, deltas: Deltas
) -> None:
    register(registry)
    registry.unregister("a1")
    deltas.take()
    registry.set_reported_state("a1", AgentState.PAUSED)
    assert deltas.take() == []
    assert registry.snapshot()[0].status is AgentState.OFFLINE


def test_offline_agents_are_forgotten_after_an_hour(
    registry: AgentRegistry, deltas: Deltas, clock: ManualClock
) -> None:
    register(registry)
    registry.unregister("a1")
    clock.advance(FORGET_OFFLINE_AFTER_SECONDS)
    registry.sweep()
    assert registry.get("a1") is not None
    clock.advance(1)
    registry.sweep()
    assert registry.get("a1") is None
    assert registry.snapshot() == []


def test_sweep_reports_every_agent_that_went_offline_in_one_delta(
    registry: AgentRegistry, deltas: Deltas, clock: ManualClock
) -> None:
    register(registry, "a1")
    register(registry, "a2", session="s2")
    register(registry, "a3", session="s3")
    registry.heartbeat("a3", None, AgentState.ONLINE, {})
    deltas.take()
    clock.advance(TIMEOUT / 2)
    registry.heartbeat("a3", None, AgentState.ONLINE, {})
    clock.advance(TIMEOUT / 2)
    registry.sweep()
    assert deltas.take() == [[("a1", False, "offline"), ("a2", False, "offline")]]


# -- listeners ---------------------------------------------------------------------------------


def test_a_failing_listener_does_not_starve_the_others(registry: AgentRegistry) -> None:
    def broken(delta: list[AgentInfo]) -> None:
        raise RuntimeError("boom")

    registry.subscribe(broken)
    after = Deltas()
    registry.subscribe(after)
    register(registry)
    assert after.take() == ONLINE


def test_unsubscribe_stops_deltas(registry: AgentRegistry) -> None:
    listener = Deltas()
    unsubscribe = registry.subscribe(listener)
    unsubscribe()
    unsubscribe()  # idempotent
    register(registry)
    assert listener.take() == []


@pytest.mark.parametrize(
    ("raw", "state"),
    [
        ("IDLE", AgentState.ONLINE),
        ("idle", AgentState.ONLINE),
        (" Busy ", AgentState.BUSY),
        ("PAUSED", AgentState.PAUSED),
        ("READY", AgentState.ONLINE),
        ("", AgentState.ONLINE),
        ("   ", AgentState.ONLINE),
        ("SLEEPY", None),
        ("OFFLINE", None),
    ],
)
def test_parse_reported_status(raw: str, state: AgentState | None) -> None:
    assert parse_reported_status(raw) is state


def test_beyond_the_number_kept_the_longest_offline_are_forgotten(clock: ManualClock) -> None:
    registry = AgentRegistry(clock, agent_timeout=TIMEOUT, stream_grace=GRACE, max_offline=2)
    for agent_id in ("a1", "a2", "a3", "live"):
        register(registry, agent_id)
    for agent_id in ("a1", "a2", "a3"):
        registry.unregister(agent_id)
        clock.advance(1)
    assert registry.get("a1") is None
    assert [info.agent_id for info in registry.infos_after(None)] == ["a2", "a3", "live"]
    # Back online, an agent no longer counts against the offline ones.
    register(registry, "a2")
    register(registry, "a4")
    registry.unregister("a4")
    assert [info.agent_id for info in registry.infos_after(None)] == ["a2", "a3", "a4", "live"]


def test_agents_are_listed_in_id_order_from_any_point(registry: AgentRegistry) -> None:
    for agent_id in ("m", "b", "z", "a"):
        register(registry, agent_id)
    assert [info.agent_id for info in registry.infos_after(None)] == ["a", "b", "m", "z"]
    assert [info.agent_id for info in registry.infos_after("b")] == ["m", "z"]
    assert [info.agent_id for info in registry.infos_after("c")] == ["m", "z"]
    assert list(registry.infos_after("z")) == []
