"""The broker's agent table: full lists, deltas, staleness and reading the proto."""

from __future__ import annotations

from agentcomm.broker.presence import AgentTable, agent_from_proto
from agentcomm.generated import agent_status_service_pb2 as pb
from agentcomm.protocol.models import AgentInfo
from agentcomm.protocol.vocabulary import AgentState


def info(agent_id: str, online: bool = True) -> AgentInfo:
    return AgentInfo(
        agent_id=agent_id,
        agent_name=agent_id,
        is_online=online,
        last_seen="2026-01-01T00:00:00.000Z",
        status=AgentState.ONLINE if online else AgentState.OFFLINE,
    )


def test_table_is_stale_until_the_first_full_list() -> None:
    table = AgentTable()
    assert table.stale
    table.apply([info("a")], full=False)
    assert table.stale
    table.apply([info("a")], full=True)
    assert not table.stale
    table.mark_stale()
    assert table.stale
    assert set(table.agents) == {"a"}


def test_full_list_replaces_and_delta_updates() -> None:
    table = AgentTable()
    table.apply([info("a"), info("b")], full=True)
    assert table.apply([info("b", online=False), info("c")], full=False) == ["b"]
    assert set(table.agents) == {"a", "b", "c"}
    assert not table.agents["b"].is_online
    # Agents missing from a full list are gone; those that were online are reported.
    assert table.apply([info("c")], full=True) == ["a"]
    assert set(table.agents) == {"c"}


def test_proto_agent_with_status_and_capabilities() -> None:
    message = pb.AgentInfo(
        agent_id="a",
        agent_name="A",
        is_online=True,
        last_seen="2026-01-01T00:00:00Z",
        status="BUSY",
        capabilities={"lang": "python"},
        in_flight=3,
    )
    agent = agent_from_proto(message)
    assert agent.status is AgentState.BUSY
    assert agent.capabilities == {"lang": "python"}
    assert agent.in_flight == 3


def test_proto_agent_from_a_server_without_status() -> None:
    assert agent_from_proto(pb.AgentInfo(agent_id="a", is_online=True)).status is AgentState.ONLINE
    offline = agent_from_proto(pb.AgentInfo(agent_id="a", is_online=False, status="online"))
    assert offline.status is AgentState.OFFLINE
    odd = agent_from_proto(pb.AgentInfo(agent_id="a", is_online=True, status="dancing"))
    assert odd.status is AgentState.ONLINE


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_agents_a_restarted_server_does_not_know_yet_are_routed_to_for_a_grace() -> None:
    clock = _Clock()
    table = AgentTable(returning_grace=4.0, clock=clock)
    table.apply([info("a"), info("b"), info("gone", online=False)], full=True)
    table.mark_stale()  # the stream is lost: the server restarts
    # The new server's first list knows only "b" so far.
    assert table.apply([info("b")], full=True) == []
    assert table.returning == {"a"}
    assert table.agents["a"].is_online
    assert "gone" not in table.agents  # only who was online is expected back
    clock.now += 3.9
    assert table.prune() == []
    # "a" registers again: the server's delta settles it.
    table.apply([info("a")], full=False)
    assert table.returning == frozenset()
    clock.now += 10
    assert table.prune() == []
    assert table.agents["a"].is_online


def test_a_returning_agent_that_does_not_come_back_is_dropped_after_the_grace() -> None:
    clock = _Clock()
    table = AgentTable(returning_grace=4.0, clock=clock)
    table.apply([info("a")], full=True)
    table.mark_stale()
    table.apply([], full=True)
    assert set(table.agents) == {"a"}
    clock.now += 4.0
    assert table.prune() == ["a"]
    assert table.agents == {}
    assert table.returning == frozenset()


def test_a_full_list_without_a_loss_keeps_nobody() -> None:
    table = AgentTable(returning_grace=4.0)
    table.apply([info("a")], full=True)
    assert table.apply([], full=True) == ["a"]
    assert table.agents == {}
    assert table.returning == frozenset()
