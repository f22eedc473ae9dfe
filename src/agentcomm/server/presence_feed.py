"""Presence for frontends: a delta on every change, the full list on request and periodically.

A delta is encoded once and the same bytes go to every socket; nothing private is broadcast.

The full list is read a page at a time (`AGENT_PAGE_BYTES`), each page only when the socket has
taken the one before (`FrameSource`): the first page says `is_full_update: true` and replaces
what a frontend knew, the others add to it like deltas, and every page but the last says
`more_pages: true`. A frontend that does not read holds one page, however many agents there
are, and a page is encoded once for every socket that reads the list within a second.
"""

from __future__ import annotations

from agentcomm.core.clock import Clock, SystemClock
from agentcomm.core.presence_views import AGENT_PAGE_BYTES, AgentSource, take_page
from agentcomm.core.sessions import FrameSource, FrontendSessions
from agentcomm.protocol.codec import encode_for_client
from agentcomm.protocol.models import AgentInfo, AgentStatusUpdate
from agentcomm.protocol.timestamps import utc_now_iso

# How long an encoded page is served again. Presence changes clear it at once; this bounds how
# stale what changes without a delta (an agent's in_flight count) may be in a list.
PAGE_REUSE_SECONDS = 1.0

_NO_AGENTS = b'"agents":[]'


def status_frame(agents: list[AgentInfo], *, full: bool) -> bytes:
    update = AgentStatusUpdate(agents=agents, is_full_update=full, send_timestamp=utc_now_iso())
    return encode_for_client(update)


def page_frame(encoded_agents: list[bytes], *, full: bool, more: bool) -> bytes:
    """An AGENT_STATUS_UPDATE of agents already encoded one by one."""
    update = AgentStatusUpdate(
        agents=[], is_full_update=full, more_pages=more or None, send_timestamp=utc_now_iso()
    )
    # The envelope's own fields precede the list and cannot contain it: the first match is it.
    return encode_for_client(update).replace(
        _NO_AGENTS, b'"agents":[' + b",".join(encoded_agents) + b"]", 1
    )


class _Listing:
    """The full list for one socket, a page at a time."""

    __slots__ = ("_after", "_done", "_feed")

    def __init__(self, feed: PresenceFeed) -> None:
        self._feed = feed
        self._after: str | None = None
        self._done = False

    def next_frame(self) -> bytes | None:
        if self._done:
            return None
        frame, self._after = self._feed.page(self._after)
        self._done = self._after is None
        return frame


class PresenceFeed:
    def __init__(
        self,
        registry: AgentSource,
        sessions: FrontendSessions,
        clock: Clock | None = None,
        page_bytes: int = AGENT_PAGE_BYTES,
    ) -> None:
        self._registry = registry
        self._sessions = sessions
        self._clock = clock or SystemClock()
        self._page_bytes = page_bytes
        # The page after an agent id (None: the first), and the id the next one follows (None:
        # it is the last); all read within PAGE_REUSE_SECONDS of `_pages_since`, with no change.
        self._pages: dict[str | None, tuple[bytes, str | None]] = {}
        self._pages_since = 0.0
        registry.subscribe(self._push_delta)

    def listing(self) -> FrameSource:
        """Every agent, as a frontend gets it when it registers or asks."""
        return _Listing(self)

    def page(self, after: str | None) -> tuple[bytes, str | None]:
        """The page of agents after `after` (the first page for None), and the id the next page
        follows (None: this is the last)."""
        now = self._clock.monotonic()
        if now - self._pages_since > PAGE_REUSE_SECONDS:
            self._pages.clear()
            self._pages_since = now
        cached = self._pages.get(after)
        if cached is not None:
            return cached
        encoded = (
            (info.agent_id, encode_for_client(info)) for info in self._registry.infos_after(after)
        )
        agents, more = take_page(encoded, lambda item: len(item[1]), self._page_bytes)
        frame = page_frame([data for _, data in agents], full=after is None, more=more)
        page = (frame, agents[-1][0] if more else None)
        self._pages[after] = page
        return page

    async def broadcast_full(self) -> None:
        """The periodic refresh: whatever a frontend missed is mended."""
        self._pages.clear()
        self._sessions.broadcast_frames(self.listing)

    def _push_delta(self, delta: list[AgentInfo]) -> None:
        self._pages.clear()
        frame = status_frame(delta, full=False)
        if len(frame) > self._page_bytes:
            # Many agents changed at once (a sweep): the list, page by page, says it all.
            self._sessions.broadcast_frames(self.listing)
            return
        self._sessions.broadcast(frame)
