"""Every agent of the cluster as frontends and brokers see it: this hub's own, and its peers'.

The hub's `AgentRegistry` is the truth about the agents registered with it; `PeerPresence`
holds what the other hubs report about theirs. This merges the two — an agent online anywhere
is online — and hands its listeners one delta per change, from either side, so that a frontend
or broker on any hub sees every agent. With no peers it is the registry as it always was.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator

from agentcomm.core.errors import AgentIdTaken
from agentcomm.core.peers import Changed, PeerPresence
from agentcomm.core.presence import AgentRegistry
from agentcomm.core.presence_views import PresenceListener, Reach
from agentcomm.protocol.cluster import HubReport
from agentcomm.protocol.models import AgentInfo
from agentcomm.protocol.vocabulary import AgentState

log = logging.getLogger(__name__)


class ClusterPresence:
    def __init__(self, registry: AgentRegistry, peers: PeerPresence) -> None:
        self.registry = registry
        self.peers = peers
        self._listeners: list[PresenceListener] = []
        registry.subscribe(self._local_changed)

    # -- listeners ---------------------------------------------------------------------------

    def subscribe(self, listener: PresenceListener) -> Callable[[], None]:
        """Calls `listener(delta)` on every change anywhere in the cluster."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def _emit(self, delta: list[AgentInfo]) -> None:
        if not delta:
            return
        for listener in list(self._listeners):
            try:
                listener(delta)
            except Exception:
                # One broken listener must not keep presence from the others.
                log.exception("Presence listener failed")

    def _local_changed(self, delta: list[AgentInfo]) -> None:
        if not self.peers.hubs():
            self._emit(delta)  # one hub: the registry's own delta, as it always was
            return
        self._emit(self._merged(info.agent_id for info in delta))

    # -- what peers report -------------------------------------------------------------------

    def apply(self, report: HubReport) -> None:
        """A peer's report: listeners hear of every agent whose merged state it changed."""
        self._emit_changed(self.peers.apply(report))

    def forget_peer(self, server_id: str, why: str) -> None:
        self._emit_changed(self.peers.forget(server_id, why))

    def expire_peers(self) -> None:
        """Peers whose lease ran out are forgotten, and their agents shown offline."""
        self._emit_changed(self.peers.expire())

    def _emit_changed(self, changed: Changed) -> None:
        delta = []
        for agent_id in sorted(changed):
            info = self.info(agent_id)
            if info is None:
                # Known nowhere any more: shown offline, as the registry shows one that left.
                last = changed[agent_id]
                info = last.model_copy(update={"is_online": False, "status": AgentState.OFFLINE})
            delta.append(info)
        self._emit(delta)

    # -- queries -----------------------------------------------------------------------------

    def info(self, agent_id: str) -> AgentInfo | None:
        """The agent as everyone should see it: online wherever it is online."""
        record = self.registry.get(agent_id)
        if record is not None and record.online:
            return record.info()
        remote = self.peers.online(agent_id)
        if remote is not None:
            return remote[1].info
        if record is not None:
            return record.info()
        entry = self.peers.entry(agent_id)
        return entry.info if entry is not None else None

    def reach(self, agent_id: str) -> Reach:
        record = self.registry.get(agent_id)
        if record is not None and record.online:
            return Reach.ONLINE
        if self.peers.online(agent_id) is not None:
            return Reach.ONLINE
        if record is not None or self.peers.entry(agent_id) is not None:
            return Reach.OFFLINE
        return Reach.UNKNOWN

    def is_online(self, agent_id: str) -> bool:
        return self.reach(agent_id) is Reach.ONLINE

    def peer_holding(self, agent_id: str) -> str | None:
        """The server id of the peer hub that has `agent_id` online, unless this hub does."""
        if self.registry.is_online(agent_id):
            return None
        remote = self.peers.online(agent_id)
        return remote[0] if remote is not None else None

    def snapshot(self) -> list[AgentInfo]:
        if not self.peers.hubs():
            return self.registry.snapshot()
        local = self.registry.snapshot()
        seen = {info.agent_id for info in local}
        merged = self._merged(seen)
        merged += self._merged(sorted(self.peers.agent_ids() - seen))
        return merged

    def infos_after(self, after: str | None) -> Iterator[AgentInfo]:
        """Every agent of the cluster whose id sorts after `after`, in id order (an agent list
        read a page at a time, see AgentRegistry.infos_after)."""
        if not self.peers.hubs():
            yield from self.registry.infos_after(after)
            return
        ids = {info.agent_id for info in self.registry.infos_after(after)}
        ids |= {
            agent_id for agent_id in self.peers.agent_ids() if after is None or agent_id > after
        }
        for agent_id in sorted(ids):
            info = self.info(agent_id)
            if info is not None:
                yield info

    def online_count(self) -> int:
        return sum(1 for info in self.snapshot() if info.is_online)

    def check_free(self, agent_id: str, session: str) -> None:
        """Raises AgentIdTaken when another process holds `agent_id` live on a peer hub; the
        same process (its session) may move from one hub to another."""
        remote = self.peers.online(agent_id)
        if remote is not None and remote[1].session != session:
            raise AgentIdTaken(agent_id)

    def _merged(self, agent_ids: Iterable[str]) -> list[AgentInfo]:
        return [info for agent_id in agent_ids if (info := self.info(agent_id)) is not None]
