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
