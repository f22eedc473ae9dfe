"""Presence for frontends: a delta on every change, the full list on request and periodically.

A delta is encoded once and the same bytes go to every socket; nothing private is broadcast.
"""

from __future__ import annotations

from agentcomm.core.presence import AgentSource
from agentcomm.core.sessions import FrontendSessions
from agentcomm.protocol.codec import encode_for_client
from agentcomm.protocol.models import AgentInfo, AgentStatusUpdate
from agentcomm.protocol.timestamps import utc_now_iso


def status_frame(agents: list[AgentInfo], *, full: bool) -> bytes:
    update = AgentStatusUpdate(agents=agents, is_full_update=full, send_timestamp=utc_now_iso())
    return encode_for_client(update)


class PresenceFeed:
    def __init__(self, registry: AgentSource, sessions: FrontendSessions) -> None:
        self._registry = registry
        self._sessions = sessions
        registry.subscribe(self._push_delta)

    def full_frame(self) -> bytes:
        """Every agent, as a frontend gets it when it registers or asks."""
        return status_frame(self._registry.snapshot(), full=True)

    async def broadcast_full(self) -> None:
        """The periodic refresh: whatever a frontend missed is mended."""
        self._sessions.broadcast(self.full_frame())

    def _push_delta(self, delta: list[AgentInfo]) -> None:
        self._sessions.broadcast(status_frame(delta, full=False))
