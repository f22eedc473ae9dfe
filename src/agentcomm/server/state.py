"""What the server's parts share about its own life: draining, and every open socket."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


class ClosableLink(Protocol):
    """An open frontend socket, as shutdown sees it."""

    def close(self, code: int) -> None: ...

    async def wait_closed(self) -> None: ...


@dataclass(eq=False)
class ServerState:
    """Owned by the hub, lent to the adapters that must know (uvicorn's ServerState, in spirit)."""

    # Set once a stop began: new sockets are turned away, readiness is off.
    draining: bool = False
    # Every open frontend socket, registered or not, so that shutdown can close them all.
    connections: set[ClosableLink] = field(default_factory=set)
