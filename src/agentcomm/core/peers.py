"""What the other hubs of the cluster know first-hand, held as leases.

Each hub reports its own agents and brokers (`protocol.cluster.HubReport`); this keeps the
latest report of every peer, and forgets a peer whose lease ran out (it died without a word)
or that said it is leaving. Pure state on an injectable clock: the hub feeds it reports and
asks it what changed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from agentcomm.core.clock import Clock
from agentcomm.protocol.cluster import HubAgent, HubBroker, HubReport
from agentcomm.protocol.ids import server_tag
from agentcomm.protocol.models import AgentInfo

log = logging.getLogger(__name__)

# Agents whose entry at a peer changed, each with the entry it had last: what to show of an
# agent that is now known nowhere (offline).
Changed = dict[str, AgentInfo]


@dataclass
class PeerHub:
    server_id: str
    websocket_url: str
    grpc_address: str
    lease_seconds: float
    heard_at: float
    seq: int
    agents: dict[str, HubAgent] = field(default_factory=dict)
    brokers: dict[str, HubBroker] = field(default_factory=dict)

    def as_json(self, now: float) -> dict[str, object]:
        return {
            "server_id": self.server_id,
            "websocket_url": self.websocket_url,
            "grpc_address": self.grpc_address,
            "agents_online": sum(1 for agent in self.agents.values() if agent.info.is_online),
            "brokers_online": sum(1 for broker in self.brokers.values() if broker.is_online),
            "last_heard_s": round(max(0.0, now - self.heard_at), 3),
        }


class PeerPresence:
    """The latest report of every live peer hub."""

    def __init__(self, clock: Clock, own_server_id: str) -> None:
        self._clock = clock
        self._own = own_server_id
        self._hubs: dict[str, PeerHub] = {}

    def apply(self, report: HubReport) -> Changed:
        """Takes a peer's report; returns the agents whose entry it changed."""
        if report.server_id == self._own:
            return {}
        hub = self._hubs.get(report.server_id)
        if hub is not None and report.seq <= hub.seq and not report.wants_full:
            return {}  # an older report that arrived late
        if report.leaving:
            return self.forget(report.server_id, "it is leaving")
        now = self._clock.monotonic()
        if hub is None:
            hub = PeerHub(
                report.server_id,
                report.websocket_url,
                report.grpc_address,
                report.lease_seconds,
                now,
                report.seq,
            )
            self._hubs[report.server_id] = hub
            log.info("Hub %s joined the cluster", report.server_id)
        changed: Changed = {}
        if report.full:
            kept = {agent.info.agent_id for agent in report.agents}
            for agent_id, gone in list(hub.agents.items()):
                if agent_id not in kept:
                    changed[agent_id] = gone.info
                    del hub.agents[agent_id]
        for agent in report.agents:
            previous = hub.agents.get(agent.info.agent_id)
            if previous != agent:
                changed[agent.info.agent_id] = agent.info
            hub.agents[agent.info.agent_id] = agent
        hub.brokers = {broker.broker_id: broker for broker in report.brokers}
        hub.seq = max(hub.seq, report.seq)
        hub.heard_at = now
        hub.lease_seconds = report.lease_seconds
        hub.websocket_url = report.websocket_url or hub.websocket_url
        hub.grpc_address = report.grpc_address or hub.grpc_address
        return changed

    def forget(self, server_id: str, why: str) -> Changed:
        """Drops a peer and everything it reported; returns its agents."""
        hub = self._hubs.pop(server_id, None)
        if hub is None:
            return {}
        log.info("Hub %s left the cluster: %s", server_id, why)
        return {agent_id: agent.info for agent_id, agent in hub.agents.items()}

    def expire(self) -> Changed:
        """Forgets the peers whose lease ran out; returns their agents."""
        now = self._clock.monotonic()
        changed: Changed = {}
        for hub in list(self._hubs.values()):
            if now - hub.heard_at > hub.lease_seconds:
                silent = now - hub.heard_at
                changed.update(self.forget(hub.server_id, f"not heard from for {silent:.1f} s"))
        return changed

    def online(self, agent_id: str) -> tuple[str, HubAgent] | None:
        """The peer hub that has `agent_id` online, and its entry; None when none has."""
        for hub in self._hubs.values():
            agent = hub.agents.get(agent_id)
            if agent is not None and agent.info.is_online:
                return hub.server_id, agent
        return None

    def entry(self, agent_id: str) -> HubAgent | None:
        """The entry of `agent_id` at some peer: an online one if any, else an offline one."""
        found = self.online(agent_id)
        if found is not None:
            return found[1]
        for hub in self._hubs.values():
            agent = hub.agents.get(agent_id)
            if agent is not None:
                return agent
        return None

    def agent_ids(self) -> set[str]:
        return {agent_id for hub in self._hubs.values() for agent_id in hub.agents}

    def hubs(self) -> list[PeerHub]:
        return list(self._hubs.values())

    def brokers(self) -> list[tuple[str, HubBroker]]:
        """Every broker the peers hold, with the id of its hub."""
        return [
            (hub.server_id, broker)
            for hub in self._hubs.values()
            for broker in hub.brokers.values()
        ]

    def hub_of_tag(self, tag: str) -> PeerHub | None:
        """The live peer whose frontend ids and queues carry `tag`."""
        for hub in self._hubs.values():
            if server_tag(hub.server_id) == tag:
                return hub
        return None
