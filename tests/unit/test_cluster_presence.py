"""Presence of the whole cluster: peers' reports held as leases and merged with this hub's own
registry, on a manual clock."""

from __future__ import annotations

import pytest

from agentcomm.core.clock import ManualClock
from agentcomm.core.cluster_presence import ClusterPresence
from agentcomm.core.errors import AgentIdTaken
from agentcomm.core.peers import PeerPresence
from agentcomm.core.presence import AgentRegistry
from agentcomm.core.presence_views import Reach
from agentcomm.protocol.cluster import HubAgent, HubReport
from agentcomm.protocol.models import AgentInfo
from agentcomm.protocol.vocabulary import AgentState

OWN = "server_" + "a" * 32
PEER = "server_" + "b" * 32


def agent(agent_id: str, *, online: bool = True, session: str = "session:s1") -> HubAgent:
    info = AgentInfo(
        agent_id=agent_id,
        agent_name=agent_id,
        is_online=online,
        last_seen="",
        status=AgentState.ONLINE if online else AgentState.OFFLINE,
    )
    return HubAgent(info=info, session=session)


def report(seq: int, *agents: HubAgent, full: bool = True, **fields: object) -> HubReport:
    return HubReport(
        server_id=PEER, seq=seq, full=full, agents=list(agents), lease_seconds=30, **fields
    )


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def registry(clock: ManualClock) -> AgentRegistry:
    return AgentRegistry(clock, agent_timeout=30, stream_grace=3)


@pytest.fixture
def cluster(clock: ManualClock, registry: AgentRegistry) -> ClusterPresence:
    return ClusterPresence(registry, PeerPresence(clock, OWN))


def test_an_agent_of_a_peer_is_online_here(cluster: ClusterPresence) -> None:
    deltas: list[list[AgentInfo]] = []
    cluster.subscribe(deltas.append)
    cluster.apply(report(1, agent("echo")))
    assert cluster.reach("echo") is Reach.ONLINE
    assert cluster.peer_holding("echo") == PEER
    assert [[info.agent_id for info in delta] for delta in deltas] == [["echo"]]
    assert [info.agent_id for info in cluster.snapshot()] == ["echo"]


def test_a_full_report_replaces_what_was_known_of_the_peer(cluster: ClusterPresence) -> None:
    cluster.apply(report(1, agent("echo"), agent("typist")))
    deltas: list[list[AgentInfo]] = []
    cluster.subscribe(deltas.append)
    cluster.apply(report(2, agent("echo")))
    assert cluster.reach("typist") is Reach.UNKNOWN
    # Known nowhere any more: shown offline.
    assert [(info.agent_id, info.is_online) for info in deltas[0]] == [("typist", False)]
    assert cluster.reach("echo") is Reach.ONLINE


def test_a_late_report_is_ignored(cluster: ClusterPresence) -> None:
    cluster.apply(report(5, agent("echo")))
    cluster.apply(report(4, agent("echo", online=False), full=False))
    assert cluster.reach("echo") is Reach.ONLINE


def test_a_silent_peer_is_dropped_when_its_lease_runs_out(
    cluster: ClusterPresence, clock: ManualClock
) -> None:
    cluster.apply(report(1, agent("echo")))
    clock.advance(29)
    cluster.expire_peers()
    assert cluster.reach("echo") is Reach.ONLINE
    clock.advance(2)
    cluster.expire_peers()
    assert cluster.reach("echo") is Reach.UNKNOWN
    assert cluster.peers.hubs() == []


def test_a_leaving_peer_takes_its_agents_with_it(cluster: ClusterPresence) -> None:
    cluster.apply(report(1, agent("echo")))
    cluster.apply(report(2, leaving=True))
    assert cluster.reach("echo") is Reach.UNKNOWN


def test_local_online_wins_over_a_peer_that_still_shows_the_agent_offline(
    cluster: ClusterPresence, registry: AgentRegistry
) -> None:
    cluster.apply(report(1, agent("echo", online=False)))
    assert cluster.reach("echo") is Reach.OFFLINE
    registry.register("echo", "echo", "session:s1")
    info = cluster.info("echo")
    assert info is not None
    assert info.is_online
    assert cluster.peer_holding("echo") is None


def test_another_process_cannot_take_an_id_live_on_a_peer(cluster: ClusterPresence) -> None:
    cluster.apply(report(1, agent("echo", session="session:first")))
    with pytest.raises(AgentIdTaken):
        cluster.check_free("echo", "session:second")
    cluster.check_free("echo", "session:first")  # the same process moving to this hub
    cluster.check_free("typist", "session:second")


def test_a_local_change_reaches_listeners_merged(
    cluster: ClusterPresence, registry: AgentRegistry
) -> None:
    cluster.apply(report(1, agent("echo")))
    deltas: list[list[AgentInfo]] = []
    cluster.subscribe(deltas.append)
    registry.register("echo", "echo", "session:s1")
    registry.unregister("echo")
    # Offline here, still online at the peer: listeners keep seeing it online.
    assert all(info.is_online for delta in deltas for info in delta)


def test_reports_of_this_hub_itself_are_ignored(clock: ManualClock) -> None:
    peers = PeerPresence(clock, PEER)
    assert peers.apply(report(1, agent("echo"))) == {}
    assert peers.hubs() == []
