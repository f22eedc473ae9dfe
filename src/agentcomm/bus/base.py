"""The one seam between agentcomm and a message bus.

Exceptions:

    BusError
    ├── BusUnavailable   the bus cannot be reached, or did not confirm in time
    ├── BusClosed        the bus was closed by its owner; a programming error to use it after
    └── Unroutable       a mandatory publish found no queue to take the message

    Requeue              raised by a handler: "not now" — the delivery goes back to the queue
                         like any failure (and counts towards max_deliveries) but is logged
                         as a plain line, not as an error with a traceback
    └── NotTaken         raised by a handler that never started on the delivery (its consumer
                         is going away): it goes back as it was, uncounted

Delivery semantics, the same on every implementation:
- `publish` returns only after the bus has taken responsibility for the message (publisher
  confirm on RabbitMQ); it raises instead of losing a message silently.
- A consumer's handler is awaited for each delivery. When it returns, the delivery is acked;
  when it raises, the delivery is requeued, and after `max_deliveries` attempts it is dropped
  (dead-lettered where the bus supports it) so that one poison message cannot block a queue.
  A delivery whose consumer died with it (a crash, a cut connection) counts as an attempt
  too, where the bus can tell, so that a message that kills its consumer cannot loop forever.
  The consumer's `on_dead_letter` is called with a message before it leaves for good, so that
  its sender can be told.
- Deliveries on one consumer are handled one at a time in queue order unless `concurrency` > 1.

Those redelivery rules are decided in one place, `Redelivery`, which every bus asks what
becomes of a delivery whose handler did not return; each bus only carries out the `Verdict`
(the in-process bus puts the message back in its deque, RabbitMQ publishes a counted copy).

Broadcasts are the other kind of traffic: state that several processes each keep a picture of
(presence, hubs), sent to every current listener of a topic rather than to one consumer of a
queue. `broadcast` waits for the bus to take the message as `publish` does, but a broadcast is
not stored for anyone who is not listening, and a listener whose handler raises loses that
message (the next broadcast of the same state mends it) instead of seeing it again: a listener
never blocks on one bad message. After a lost connection a listener misses what was broadcast
while it was away, so the bus tells its owner when the connection is back (`on_reconnect`), for
it to ask its peers for the full picture again.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)


class BusError(Exception):
    """Base of every bus failure."""


class BusUnavailable(BusError):
    """The bus cannot be reached right now, or did not confirm a publish in time."""


class BusClosed(BusError):
    """The bus was closed and cannot be used any more."""


class Unroutable(BusError):
    """A mandatory publish found no queue; the message was returned, not stored."""


class Requeue(Exception):
    """A handler's way to hand a delivery back without it being an error."""


class NotTaken(Requeue):
    """A handler never started on this delivery (its consumer is going away): it goes back as
    it was, not counted as an attempt."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message handed to a consumer."""

    queue: str
    body: bytes
    message_id: str | None
    redelivered: bool
    # How many times this message has been handed out before, where the bus knows it.
    attempt: int = 1
    # The application headers it was published with (`traceparent` when tracing is on); None
    # when it carried none.
    headers: Mapping[str, object] | None = None


MessageHandler = Callable[[Delivery], Awaitable[None]]


class Verdict(enum.Enum):
    """What becomes of a delivery whose handler raised."""

    # NotTaken: its handler never started on it; back as it was, not counted.
    UNTOUCHED = "untouched"
    # BusUnavailable under the handler: not the message's fault; back, not counted.
    BUS_FAILED = "bus failed"
    # The handler was cancelled (its consumer is going away with it): back, and counted as an
    # attempt where the bus can tell (ask `Redelivery.charge` when it is counted).
    CUT_OFF = "cut off"
    # A failure, or Requeue: back for another attempt, counted.
    RETRY = "retry"
    # A failure on the last attempt: dead-lettered where the bus can, dropped otherwise.
    DEAD_LETTER = "dead letter"


@dataclass(frozen=True, slots=True)
class Redelivery:
    """The redelivery rules of one consumer: pure decisions, the same on every bus."""

    max_deliveries: int

    def after(self, error: BaseException, attempt: int) -> Verdict:
        """The verdict on a delivery whose handler raised `error` on its `attempt`-th try."""
        if isinstance(error, NotTaken):
            return Verdict.UNTOUCHED
        if isinstance(error, BusUnavailable):
            return Verdict.BUS_FAILED
        if isinstance(error, asyncio.CancelledError):
            return Verdict.CUT_OFF
        return self.charge(attempt)

    def charge(self, attempt: int) -> Verdict:
        """Counts the `attempt`-th try as failed: another one, or none left."""
        return Verdict.DEAD_LETTER if attempt >= self.max_deliveries else Verdict.RETRY

    def report(
        self, logger: logging.Logger, verdict: Verdict, error: BaseException, delivery: Delivery
    ) -> None:
        """Logs why `delivery` was not acked, in the same words on every bus (on the bus's
        own logger). A failure is an error with its traceback; a handler's own "not now" is a
        plain line."""
        message_id, queue = delivery.message_id, delivery.queue
        # JSON logs carry it as a field of its own (logging_setup.py).
        extra = {"message_id": message_id}
        if verdict is Verdict.UNTOUCHED:
            logger.info(
                "Message %s on %s given back untouched: %s", message_id, queue, error, extra=extra
            )
        elif verdict is Verdict.BUS_FAILED:
            logger.warning(
                "Message %s on %s goes back to the queue: the bus failed while it was handled (%s)",
                message_id,
                queue,
                error,
                extra=extra,
            )
        elif verdict is Verdict.CUT_OFF:
            return
        elif isinstance(error, Requeue):
            logger.info(
                "Message %s on %s handed back (attempt %d of %d): %s",
                message_id,
                queue,
                delivery.attempt,
                self.max_deliveries,
                error,
                extra=extra,
            )
        else:
            logger.error(
                "Handler failed for message %s on %s (attempt %d of %d)",
                message_id,
                queue,
                delivery.attempt,
                self.max_deliveries,
                exc_info=error,
                extra=extra,
            )


async def notify_dead_letter(on_dead_letter: MessageHandler, delivery: Delivery) -> None:
    """Calls a consumer's `on_dead_letter`; what it raises is logged, the message leaves anyway."""
    try:
        await on_dead_letter(delivery)
    except Exception:
        log.exception(
            "The dead-letter hook failed for message %s on %s", delivery.message_id, delivery.queue
        )


# A topic is an id: it names an exchange on RabbitMQ (`agentcomm.<topic>`), within its 255 bytes.
_TOPIC = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


def check_topic(topic: str) -> str:
    """`topic` if it is a valid topic name; raises ValueError otherwise."""
    if not _TOPIC.fullmatch(topic):
        raise ValueError(
            f"Topic {topic!r} is not a valid topic name: 1 to 100 letters, digits, '_', '.' or "
            "'-', starting with a letter or digit."
        )
    return topic


def report_dropped(logger: logging.Logger, error: BaseException, delivery: Delivery) -> None:
    """Logs a broadcast whose listener raised, in the same words on every bus: it is dropped,
    not retried (a cancelled handler, its listener going away, is not logged)."""
    if isinstance(error, asyncio.CancelledError):
        return
    logger.error(
        "Listener of %s failed on broadcast %s; the message is dropped",
        delivery.queue,
        delivery.message_id,
        exc_info=error,
    )


@dataclass(frozen=True, slots=True)
class QueueOptions:
    """How a queue is declared. Every queue is durable; these add expiry and dead-lettering."""

    # Messages older than this many milliseconds leave the queue (to the dead-letter queue).
    message_ttl_ms: int | None = None
    dead_letter_queue: str | None = None
    # The queue itself is deleted after this long without consumers (per-server queues).
    expires_ms: int | None = None


@dataclass(frozen=True, slots=True)
class QueueStats:
    """What a bus tells of one queue (`queue_stats`, which both buses have beside the Bus
    protocol): messages waiting, and consumers."""

    messages: int
    consumers: int


class Subscription(Protocol):
    async def cancel(self) -> None:
        """Stops taking new deliveries; those being handled finish and are acked first."""


class Bus(Protocol):
    """What the server, broker and agents need from a message bus."""

    @property
    def is_connected(self) -> bool: ...

    async def connect(self) -> None:
        """Connects; idempotent. Raises BusUnavailable when the bus cannot be reached."""

    async def declare_queue(self, name: str, options: QueueOptions | None = None) -> None:
        """Declares a durable queue; idempotent for the same options."""

    async def publish(
        self,
        queue: str,
        body: bytes,
        *,
        message_id: str | None = None,
        mandatory: bool = True,
        timeout: float = 5.0,
        headers: Mapping[str, str] | None = None,
        persistent: bool = True,
    ) -> None:
        """Stores a persistent message in `queue` and waits for the bus to confirm it.

        A message published without `message_id` gets a fresh one. `headers` travel with it
        to the consumer's `Delivery.headers` (AMQP headers on RabbitMQ): the trace context.
        With `persistent=False` the message is kept in memory only (RabbitMQ does not write it
        to disk, and loses it if it restarts): for what a later message makes whole again, such
        as the chunks of a streamed reply before its final REPLY. Publishing keeps working
        while `close()` lets running handlers finish, so that they can hand on their results.
        """

    async def consume(
        self,
        queue: str,
        handler: MessageHandler,
        *,
        prefetch: int | None = None,
        concurrency: int = 1,
        max_deliveries: int = 5,
        on_dead_letter: MessageHandler | None = None,
    ) -> Subscription:
        """Hands each message of `queue` to `handler`; acks after it returns.

        `prefetch` None means the bus's default (RABBITMQ_PREFETCH). A missing queue raises
        Unroutable: every process declares the queues it consumes. `on_dead_letter` is called
        with a message that ran out of its `max_deliveries` attempts, just before it is
        dead-lettered or dropped; what it raises is logged and does not keep the message.
        """

    async def delete_queue(self, name: str) -> None:
        """Removes a queue and what it holds; a missing queue is not an error."""

    async def broadcast(
        self,
        topic: str,
        body: bytes,
        *,
        message_id: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        """Hands `body` to every current listener of `topic` and waits for the bus to take it
        (publisher confirm on RabbitMQ). No listener is not an error. Raises BusUnavailable
        like publish.

        A broadcast is not persistent and is kept for no one who is not listening now. A
        broadcast without `message_id` gets a fresh one. `topic` is an id such as "presence"
        (letters, digits, '_', '.', '-'); any other name raises ValueError.
        """

    async def listen(
        self, topic: str, handler: MessageHandler, *, prefetch: int | None = None
    ) -> Subscription:
        """Calls `handler` with every message broadcast on `topic` from now on, in order,
        through a queue of this listener's own that lives as long as the listener: what was
        broadcast while it was not listening is not kept for it.

        The delivery (its `queue` is the topic) is acked when the handler returns; a handler
        that raises is logged and its message dropped (broadcasts are state that is sent again,
        not work to retry). `prefetch` None means the bus's default. The listener survives a
        lost connection and listens again once the bus has reconnected, but what was broadcast
        while the connection was down is lost for it: see `on_reconnect`.
        `Subscription.cancel()` removes the listener's queue.
        """

    def on_reconnect(self, callback: Callable[[], None]) -> None:
        """Calls `callback` (synchronously; it may start a task) each time the connection came
        back after a loss, once the consumers and listeners are back too: the owner's cue to
        ask its peers for what its listeners missed meanwhile. What it raises is logged. A bus
        that cannot lose its connection (the in-process bus) never calls it."""

    async def close(self) -> None:
        """Cancels consumers (letting handlers finish) and disconnects; idempotent."""
