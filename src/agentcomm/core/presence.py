"""The agent registry: who is registered, who is online, and every change pushed at once.

Presence rule (PROTOCOL §5): an agent is online from a successful registration until it
unregisters, or until neither a heartbeat nor an open command/message stream has been seen for
`agent_timeout` seconds, or its last stream broke and was not reopened within `stream_grace`.
Each transition is handed to every listener as a delta, synchronously, so that listeners only
enqueue and never block the registry.

A lost stream is acted on when it is lost, not by the next sweep: with no grace the agent is
offline at once; otherwise one timer per loss ends the grace. `sweep()` applies the silence
timeout (and catches a grace whose timer could not be set).
"""

from __future__ import annotations

import bisect
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

from agentcomm.core.clock import Clock
from agentcomm.core.errors import AgentIdTaken, NotYourAgent, UnknownAgent
from agentcomm.core.presence_views import PresenceListener, Reach
from agentcomm.core.timers import Timers
from agentcomm.protocol.models import AgentInfo
from agentcomm.protocol.timestamps import to_iso
from agentcomm.protocol.vocabulary import AgentState

log = logging.getLogger(__name__)

# What an agent may report in a heartbeat, mapped to the presence frontends see.
_REPORTED_STATES = {
    "IDLE": AgentState.ONLINE,
    "ONLINE": AgentState.ONLINE,
    "READY": AgentState.ONLINE,
    "BUSY": AgentState.BUSY,
    "PAUSED": AgentState.PAUSED,
}

# Offline agents are forgotten after this long, and the oldest of them once there are more than
# this many, so that agents coming and going cannot grow the registry (and the agent list every
# frontend and broker reads) without bound. The defaults of OFFLINE_AGENT_RETENTION and
# OFFLINE_AGENTS_KEPT.
FORGET_OFFLINE_AFTER_SECONDS = 3600.0
MAX_OFFLINE_AGENTS = 1000


def parse_reported_status(raw: str) -> AgentState | None:
    """An agent's heartbeat status (any case), or None when it is not one we know."""
    return _REPORTED_STATES.get(raw.strip().upper()) if raw.strip() else AgentState.ONLINE


@dataclass
class AgentRecord:
    agent_id: str
    agent_name: str
    session: str
    version: str = ""
    capabilities: dict[str, str] = field(default_factory=dict)
    hostname: str = ""
    platform: str = ""
    online: bool = True
    reported: AgentState = AgentState.ONLINE
    metrics: dict[str, str] = field(default_factory=dict)
    last_seen: datetime | None = None
    last_seen_mono: float = 0.0
    open_streams: int = 0
    stream_lost_at: float | None = None
    offline_since: float | None = None

    @property
    def state(self) -> AgentState:
        return self.reported if self.online else AgentState.OFFLINE

    @property
    def in_flight(self) -> int:
        try:
            return max(0, int(self.metrics.get("in_flight", "0")))
        except ValueError:
            return 0

    def info(self) -> AgentInfo:
        return AgentInfo(
            agent_id=self.agent_id,
            agent_name=self.agent_name,
            is_online=self.online,
            last_seen=to_iso(self.last_seen) if self.last_seen else "",
            status=self.state,
            capabilities=dict(self.capabilities),
            in_flight=self.in_flight,
        )


class AgentRegistry:
    """Canonical agent state of this server process."""

    def __init__(
        self,
        clock: Clock,
        *,
        agent_timeout: float,
        stream_grace: float,
        timers: Timers | None = None,
        offline_retention: float = FORGET_OFFLINE_AFTER_SECONDS,
        max_offline: int = MAX_OFFLINE_AGENTS,
    ) -> None:
        self._clock = clock
        self._agent_timeout = agent_timeout
        self._stream_grace = stream_grace
        # Without timers a grace ends at the first sweep after it ran out.
        self._timers = timers
        self._agents: dict[str, AgentRecord] = {}
        # Every id, sorted: the order agent lists are read in, page by page (`infos_after`).
        self._order: list[str] = []
        # Offline agents, the longest offline first.
        self._offline: OrderedDict[str, None] = OrderedDict()
        self._offline_retention = offline_retention
        self._max_offline = max_offline
        self._listeners: list[PresenceListener] = []
        # Set while the server stops: the streams it closes itself say nothing about its agents.
        self._stopping = False

    # -- listeners ---------------------------------------------------------------------------

    def subscribe(self, listener: PresenceListener) -> Callable[[], None]:
        """Calls `listener(delta)` on every change; returns the function that unsubscribes."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def _emit(self, records: list[AgentRecord]) -> None:
        if not records:
            return
        delta = [record.info() for record in records]
        for listener in list(self._listeners):
            try:
                listener(delta)
            except Exception:
                # One broken listener must not keep presence from the others.
                log.exception("Presence listener failed")

    # -- queries -----------------------------------------------------------------------------

    def get(self, agent_id: str) -> AgentRecord | None:
        return self._agents.get(agent_id)

    def require(self, agent_id: str) -> AgentRecord:
        record = self._agents.get(agent_id)
        if record is None:
            raise UnknownAgent(agent_id)
        return record

    def is_online(self, agent_id: str) -> bool:
        record = self._agents.get(agent_id)
        return record is not None and record.online

    def reach(self, agent_id: str) -> Reach:
        record = self._agents.get(agent_id)
        if record is None:
            return Reach.UNKNOWN
        return Reach.ONLINE if record.online else Reach.OFFLINE

    def snapshot(self) -> list[AgentInfo]:
        return [record.info() for record in self._agents.values()]

    def infos_after(self, after: str | None) -> Iterator[AgentInfo]:
        """Every agent whose id sorts after `after` (all of them for None), in id order: an agent
        list read a page at a time. Read each page at once; agents registered meanwhile are
        announced by a delta of their own."""
        order = self._order
        index = 0 if after is None else bisect.bisect_right(order, after)
        while index < len(order):
            yield self._agents[order[index]].info()
            index += 1

    def online_count(self) -> int:
        return sum(1 for record in self._agents.values() if record.online)

    # -- transitions -------------------------------------------------------------------------

    def register(
        self,
        agent_id: str,
        agent_name: str,
        session: str,
        *,
        version: str = "",
        capabilities: dict[str, str] | None = None,
        hostname: str = "",
        platform: str = "",
    ) -> AgentRecord:
        """Registers (or re-registers) an agent; a live id held by another session is refused.

        An id whose streams all broke and were not reopened (it is within STREAM_GRACE) may be
        taken over: a live process reopens them with its own session, so this is most likely
        its process restarted after a crash, which must not wait for the grace to run out.
        """
        existing = self._agents.get(agent_id)
        if (
            existing is not None
            and existing.online
            and existing.session != session
            and existing.stream_lost_at is None
        ):
            raise AgentIdTaken(agent_id)
        record = AgentRecord(
            agent_id=agent_id,
            agent_name=agent_name or agent_id,
            session=session,
            version=version,
            capabilities=dict(capabilities or {}),
            hostname=hostname,
            platform=platform,
            open_streams=existing.open_streams if existing and existing.session == session else 0,
        )
        self._touch(record)
        self._agents[agent_id] = record
        if existing is None:
            bisect.insort(self._order, agent_id)
        self._offline.pop(agent_id, None)
        changed = existing is None or existing.info() != record.info()
        if changed:
            log.info("Agent %s (%s) is online", agent_id, record.agent_name)
            self._emit([record])
        return record

    def unregister(self, agent_id: str, session: str | None = None) -> AgentRecord:
        record = self.require(agent_id)
        if session is not None and record.session != session and record.online:
            raise NotYourAgent(agent_id)
        if record.online:
            self._go_offline(record, "unregistered")
        return record

    def heartbeat(
        self, agent_id: str, session: str | None, status: AgentState, metrics: dict[str, str]
    ) -> AgentRecord:
        record = self.require(agent_id)
        if session is not None and record.session != session:
            if record.online:
                raise NotYourAgent(agent_id)
            # A restarted agent process that heartbeats before registering again takes over.
            record.session = session
        before = record.state
        record.metrics = dict(metrics)
        record.reported = status
        was_online = record.online
        self._back_online(record)
        # A heartbeat proves the agent alive even if its stream broke: no stream-loss timeout.
        record.stream_lost_at = None
        self._touch(record)
        if not was_online or before != record.state:
            self._emit([record])
        return record

    def stream_opened(self, agent_id: str) -> AgentRecord:
        record = self.require(agent_id)
        record.open_streams += 1
        record.stream_lost_at = None
        self._touch(record)
        if not record.online:
            self._back_online(record)
            self._emit([record])
        return record

    def stop_judging_streams(self) -> None:
        """The server is stopping and closes every agent stream itself: from now on a closed
        stream (or a grace running out) takes no agent offline. Otherwise, with a short
        STREAM_GRACE, agents went offline in the middle of the graceful stop and the messages
        still being handled for them were refused with agent_offline instead of waiting in
        their queues for the next server."""
        self._stopping = True

    def stream_closed(self, agent_id: str) -> None:
        record = self._agents.get(agent_id)
        if record is None:
            return
        record.open_streams = max(0, record.open_streams - 1)
        self._touch(record)
        if record.open_streams == 0 and record.online and not self._stopping:
            lost_at = self._clock.monotonic()
            record.stream_lost_at = lost_at
            if self._stream_grace <= 0:
                self._go_offline(record, "its stream broke")
            elif self._timers is not None:
                self._timers.call_later(
                    self._stream_grace, lambda: self._grace_over(record, lost_at)
                )

    def _grace_over(self, record: AgentRecord, lost_at: float) -> None:
        """The grace of the stream loss at `lost_at` ran out; nothing to do when the agent
        reopened a stream, heartbeat, registered again or lost a later stream since."""
        if (
            not self._stopping
            and self._agents.get(record.agent_id) is record
            and record.online
            and record.open_streams == 0
            and record.stream_lost_at == lost_at
        ):
            self._go_offline(record, "its stream broke and was not reopened")

    def set_reported_state(self, agent_id: str, status: AgentState) -> None:
        """An agent's own account of its state, e.g. the result of a pause command."""
        record = self.require(agent_id)
        if record.reported != status:
            record.reported = status
            if record.online:
                self._emit([record])

    def sweep(self) -> list[AgentInfo]:
        """Applies the timeouts; returns the agents that went offline. Call it periodically."""
        now = self._clock.monotonic()
        gone: list[AgentRecord] = []
        self._forget_offline(now)
        for record in list(self._agents.values()):
            if not record.online:
                continue
            silent_for = now - record.last_seen_mono
            if record.open_streams == 0 and silent_for >= self._agent_timeout:
                self._go_offline(record, f"silent for {silent_for:.1f} s", emit=False)
                gone.append(record)
            elif (
                record.stream_lost_at is not None
                and record.open_streams == 0
                and now - record.stream_lost_at >= self._stream_grace
            ):
                self._go_offline(record, "its stream broke and was not reopened", emit=False)
                gone.append(record)
        self._emit(gone)
        return [record.info() for record in gone]

    def _touch(self, record: AgentRecord) -> None:
        record.last_seen = self._clock.now()
        record.last_seen_mono = self._clock.monotonic()

    def _go_offline(self, record: AgentRecord, why: str, *, emit: bool = True) -> None:
        record.online = False
        record.stream_lost_at = None
        record.offline_since = self._clock.monotonic()
        self._offline[record.agent_id] = None
        self._offline.move_to_end(record.agent_id)
        log.info("Agent %s is offline: %s", record.agent_id, why)
        if emit:
            self._emit([record])
        self._forget_offline(record.offline_since)

    def _back_online(self, record: AgentRecord) -> None:
        record.online = True
        record.offline_since = None
        self._offline.pop(record.agent_id, None)

    def _forget_offline(self, now: float) -> None:
        """Forgets the agents offline for longer than the retention, and the longest offline
        beyond the number kept."""
        offline = self._offline
        while offline:
            agent_id = next(iter(offline))
            record = self._agents[agent_id]
            since = record.offline_since if record.offline_since is not None else now
            if len(offline) <= self._max_offline and now - since <= self._offline_retention:
                break
            del offline[agent_id]
            del self._agents[agent_id]
            del self._order[bisect.bisect_left(self._order, agent_id)]
            log.info("Forgot agent %s, offline since %.0f s", agent_id, now - since)
