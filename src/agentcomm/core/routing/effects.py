"""What the server's routing asks of the edge, as plain values (the sans-I/O seam).

A routing decision is a `Plan`: a generator that yields one effect at a time and is resumed
once the effect was carried out. `server/routing.py` carries them out — publishes on the bus,
frames to frontend sessions, waits — and throws a publish's failure back into the plan as one
of the exceptions below, so that the decision of what follows stays here, next to the rule it
belongs to, and the core never touches the bus.

PublishFailed            a publish the plan asked for did not happen
├── QueueMissing         no queue took it (a mandatory publish was returned)
└── BusDown              the bus is unreachable, or did not confirm in time
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


class PublishFailed(Exception):
    """A publish did not happen. When a plan lets it through, the edge raises the bus's own
    error in its place, so that callers see the failure they always saw."""


class QueueMissing(PublishFailed):
    """The message was returned: no queue of that name exists."""


class BusDown(PublishFailed):
    """The bus is unavailable; the message was not stored."""


@dataclass(frozen=True, slots=True)
class Publish:
    """Publish `body` on `queue` and wait for the bus to take it (publisher confirm)."""

    queue: str
    body: bytes
    message_id: str
    # A mandatory publish to a queue that does not exist fails with QueueMissing.
    mandatory: bool = True
    # Seconds the bus has to confirm it.
    timeout: float = 5.0


@dataclass(frozen=True, slots=True)
class SendFrame:
    """Hand `frame` to a frontend session: its socket, or its resume backlog."""

    frontend_id: str
    frame: bytes


@dataclass(frozen=True, slots=True)
class WaitFor:
    """Wait until `event` is done, at most `timeout` seconds; then the plan goes on either way,
    and a timeout is logged as `on_timeout`."""

    event: asyncio.Future[None]
    timeout: float
    on_timeout: str


Effect = Publish | SendFrame | WaitFor

# A routing decision that yields effects and ends with a value of type T.
Plan = Generator[Effect, None, T]
