"""What the rest of the hub reads of presence: whether an agent can be reached, the agent list
as listeners see it (one hub's registry or the whole cluster's view), and that list in pages."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from enum import Enum
from typing import Protocol, TypeVar

from agentcomm.protocol.models import AgentInfo

PresenceListener = Callable[[list[AgentInfo]], None]


class Reach(Enum):
    """Whether an agent can be reached now, as routing asks it."""

    ONLINE = "online"  # registered and online (here, or at a peer hub of the cluster)
    OFFLINE = "offline"  # known, but online nowhere
    UNKNOWN = "unknown"  # registered nowhere this hub knows of


class AgentSource(Protocol):
    """Presence as its listeners read it: one hub's registry, or the whole cluster's view."""

    def snapshot(self) -> list[AgentInfo]: ...

    def infos_after(self, after: str | None) -> Iterator[AgentInfo]: ...

    def subscribe(self, listener: PresenceListener) -> Callable[[], None]: ...


class AgentLookup(Protocol):
    """What routing asks of presence: one hub's registry, or the whole cluster's view."""

    def reach(self, agent_id: str) -> Reach: ...


# What one page of an agent list may hold (and always at least one agent): well within what any
# client takes in one WebSocket frame or gRPC message (4 MiB by gRPC's default), and small enough
# that a socket that does not read holds one page, not a list that grows with the agents.
AGENT_PAGE_BYTES = 256 * 1024

T = TypeVar("T")


def take_page(
    items: Iterator[T], size_of: Callable[[T], int], max_bytes: int = AGENT_PAGE_BYTES
) -> tuple[list[T], bool]:
    """The next items of `items` up to `max_bytes` in all (the first one always), and whether
    any are left after them."""
    page: list[T] = []
    size = 0
    for item in items:
        item_size = size_of(item)
        if page and size + item_size > max_bytes:
            return page, True
        page.append(item)
        size += item_size
    return page, False
