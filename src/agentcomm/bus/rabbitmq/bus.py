"""The RabbitMQ bus (aio-pika): durable queues, persistent confirmed publishes, manual acks.

One robust connection carries three kinds of channel:

- one publishing channel with publisher confirms, shared by every concurrent publisher (many
  confirms can be in flight on one channel, so publishers never wait for each other's round
  trip);
- one channel for declaring and deleting queues, so that a refused declaration (RabbitMQ closes
  the channel on PRECONDITION_FAILED) never fails the publishes in flight;
- one channel per consumer, each with its own prefetch.

The hot path stays below aio-pika's wrappers, which cost more than the work itself: the
connection gathers the frames of one event-loop turn into one write (`gathering.py`), publishes
go to aiormq's channel with their properties built once, deliveries arrive as aiormq hands them
over (`inbound.py`), and acks go out in runs (`acks.py`).

The connection reconnects by itself and the channels and consumers come back with it (a
consumer re-declares the queue it consumes, so a queue this bus declared and that expired
meanwhile is created again). Publishing while the connection is down waits for it up to the
publish's timeout, then raises BusUnavailable; so does publishing while RabbitMQ reads nothing
(a resource alarm, a stalled link: the connection's transport is above its high-water mark),
and a publish that timed out that way was never sent.

Bounded redelivery: classic queues do not count deliveries, so when a handler raises, the bus
publishes a copy of the message carrying an attempt counter (header `agentcomm-attempt`) to the
tail of the same queue, waits for the broker to confirm it, and only then acks the original. A
message whose counter reached `max_deliveries` goes to the queue's dead-letter queue instead (or
is dropped with a warning when the queue has none), after the consumer's `on_dead_letter` saw
it. A copy gets the queue's message TTL afresh.

A message RabbitMQ hands out again because its consumer never settled it (the process died,
the connection broke) may be one that kills its consumer. Such a "suspect" is charged an
attempt right before it is handled again: a counted copy goes to the tail and the original is
acked, then the handler runs. If the consumer dies again, the counted copy comes back; if the
handler finishes, the copy comes back as a duplicate, which every consumer here recognises by
its message_id. Suspects of one consumer are handled one at a time, so that a crash charges only
the one that was running, not every message that happened to be prefetched with it.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote, urlsplit

import aio_pika
from aio_pika.abc import (
    AbstractRobustChannel,
    AbstractRobustConnection,
    AbstractRobustQueue,
    DeliveryMode,
    FieldValue,
    HeadersType,
)
from aio_pika.exceptions import (
    CONNECTION_EXCEPTIONS,
    AMQPError,
    ChannelInvalidStateError,
    ChannelNotFoundEntity,
    ChannelPreconditionFailed,
    ProbableAuthenticationError,
)
from aiormq import spec
from aiormq.abc import AbstractChannel
from aiormq.exceptions import InvalidFrameError

from agentcomm.bus.base import (
    BusClosed,
    BusError,
    BusUnavailable,
    Delivery,
    MessageHandler,
    NotTaken,
    QueueOptions,
    Requeue,
    Unroutable,
    notify_dead_letter,
)
from agentcomm.bus.rabbitmq.turns import KeyedTurns
from agentcomm.bus.rabbitmq.wire.acks import ChannelAcks
from agentcomm.bus.rabbitmq.wire.fastpath import Publisher, Refused, Returned, frame_max_of
from agentcomm.bus.rabbitmq.wire.gathering import GatheringRobustConnection
from agentcomm.bus.rabbitmq.wire.inbound import (
    BusConnection,
    InboundMessage,
    RawConsumer,
    fast_path_of,
)

# The name operators filter on; it was the module's own name before the bus became a package.
log = logging.getLogger("agentcomm.bus.rabbitmq")

ATTEMPT_HEADER = "agentcomm-attempt"
DEAD_LETTERED_FROM_HEADER = "agentcomm-dead-lettered-from"
JSON_CONTENT_TYPE = "application/json"

_PERSISTENT = int(DeliveryMode.PERSISTENT)

# Errors that mean "the connection or channel is not usable right now".
_TRANSPORT_ERRORS = (AMQPError, ChannelInvalidStateError, ConnectionError, OSError)


class RabbitMQBus:
    """The production bus: RabbitMQ through one robust aio-pika connection.

    `url` is an AMQP URL (`amqp://user:password@host:port/vhost`). `connect_attempts` bounds the
    retries at start (exponential backoff between them); after a successful start the connection
    reconnects by itself for as long as the bus is open. `prefetch_default` is the prefetch of a
    consumer that does not ask for one. `name` is shown as the connection name in RabbitMQ.
    `heartbeat` (seconds, unless the URL sets it) is proposed to RabbitMQ; a connection that
    stays silent for about three heartbeats is taken for dead and reconnected.
    """

    # Seconds one connection attempt at start may take before it counts as failed.
    CONNECT_TIMEOUT = 10.0
    # Pauses between the start attempts: doubling from the first up to the cap.
    BACKOFF_FIRST = 0.5
    BACKOFF_MAX = 10.0
    # Seconds between reconnection attempts once started (unless the URL sets it).
    RECONNECT_INTERVAL = 1.0
    # Bound on declare/delete/consume set-up calls, which otherwise wait for a reconnect.
    OPERATION_TIMEOUT = 10.0
    # Bound on each step of close() and Subscription.cancel() that talks to the broker.
    CLOSE_TIMEOUT = 5.0
    # The same when close() itself is being cancelled.
    HURRIED_CLOSE_TIMEOUT = 0.5
    # Bound on republishing a failed message (retry copy or dead-letter copy).
    REPUBLISH_TIMEOUT = 10.0
    # Pause before trying a publish again on a channel that closed before the message was sent.
    _RESEND_PAUSE = 0.05

    def __init__(
        self,
        url: str,
        *,
        connect_attempts: int = 10,
        prefetch_default: int = 200,
        name: str = "agentcomm",
        heartbeat: int | None = None,
    ) -> None:
        if connect_attempts < 1:
            raise ValueError(f"connect_attempts must be at least 1, got {connect_attempts}.")
        _check_prefetch(prefetch_default)
        self._url = url
        self._where = _describe(url)
        self._connect_attempts = connect_attempts
        self._prefetch_default = prefetch_default
        self._heartbeat = heartbeat
        self._name = name
        self._connection: AbstractRobustConnection | None = None
        self._publish_channel: AbstractRobustChannel | None = None
        # Publishes on the publish channel's current aiormq channel (a new one after a reconnect).
        self._publisher: Publisher | None = None
        self._admin_channel: AbstractRobustChannel | None = None
        self._connect_lock = asyncio.Lock()
        # Declarations share one channel; a refused one closes it, so they take turns rather
        # than fail each other.
        self._admin_lock = asyncio.Lock()
        self._subscriptions: set[_RabbitSubscription] = set()
        # Options of the queues declared through this bus: consumers re-declare with them after
        # a reconnect, and dead-lettering needs to know the dead-letter queue.
        self._queue_options: dict[str, QueueOptions] = {}
        # Held by message_id while a publish with that id waits for its confirm (see
        # _publish_message).
        self._publishing_ids = KeyedTurns()
        # While closing, handlers still running may publish their results; new consumers and
        # declarations are refused. Once closed, everything is refused.
        self._closing = False
        self._closed = False
        self._closed_event = asyncio.Event()

    def __repr__(self) -> str:
        return f"<RabbitMQBus {self._name!r} at {self._where}>"

    @property
    def is_connected(self) -> bool:
        connection = self._connection
        return (
            not self._closed
            and connection is not None
            and not connection.is_closed
            and connection.connected.is_set()
        )

    async def connect(self) -> None:
        async with self._connect_lock:
            if self._closing or self._closed:
                raise BusClosed("Cannot connect: the bus is closed.")
            if self._connection is not None:
                return
            connection = await self._connect_with_retries()
            if self._closing or self._closed:
                # close() ran while we were connecting.
                await self._close_connection(connection)
                raise BusClosed("Cannot connect: the bus was closed while connecting.")
            try:
                async with asyncio.timeout(self.OPERATION_TIMEOUT):
                    publish_channel = connection.channel(
                        publisher_confirms=True, on_return_raises=True
                    )
                    await publish_channel.initialize()
                    admin_channel = connection.channel(publisher_confirms=False)
                    await admin_channel.initialize()
            except (TimeoutError, *_TRANSPORT_ERRORS) as exc:
                await self._close_connection(connection)
                raise BusUnavailable(
                    f"Connected to RabbitMQ at {self._where} but could not open channels: {exc!r}."
                ) from exc
            if self._closing or self._closed:
                await self._close_connection(connection)
                raise BusClosed("Cannot connect: the bus was closed while connecting.")
            self._connection = connection
            self._publish_channel = publish_channel
            self._admin_channel = admin_channel
            log.info("Connected to RabbitMQ at %s", self._where)

    async def _connect_with_retries(self) -> AbstractRobustConnection:
        pause = self.BACKOFF_FIRST
        attempts = self._connect_attempts
        extra: dict[str, Any] = {}
        query = urlsplit(self._url).query
        if "reconnect_interval" not in query:
            extra["reconnect_interval"] = self.RECONNECT_INTERVAL
        if self._heartbeat is not None and "heartbeat" not in query:
            extra["heartbeat"] = self._heartbeat
        for attempt in range(1, attempts + 1):
            try:
                connection: AbstractRobustConnection = await aio_pika.connect_robust(
                    self._url,
                    timeout=self.CONNECT_TIMEOUT,
                    client_properties={"connection_name": self._name},
                    connection_class=BusConnection,
                    **extra,
                )
                return connection
            except (TimeoutError, *CONNECTION_EXCEPTIONS) as exc:
                reason = _connect_failure(exc)
                if attempt == attempts:
                    log.warning(
                        "Cannot reach RabbitMQ at %s (attempt %d of %d): %s; giving up",
                        self._where,
                        attempt,
                        attempts,
                        reason,
                    )
                    raise BusUnavailable(
                        f"Cannot reach RabbitMQ at {self._where} after {attempts} "
                        f"attempt{'s' if attempts > 1 else ''}: {reason}. Check that RabbitMQ "
                        "is running and that RABBITMQ_HOST, RABBITMQ_PORT, RABBITMQ_VHOST and "
                        "the credentials are right."
                    ) from exc
                log.warning(
                    "Cannot reach RabbitMQ at %s (attempt %d of %d): %s; retrying in %.1f s",
                    self._where,
                    attempt,
                    attempts,
                    reason,
                    pause,
                )
            await asyncio.sleep(pause)
            pause = min(pause * 2, self.BACKOFF_MAX)
            if self._closing or self._closed:
                raise BusClosed("Cannot connect: the bus was closed while connecting.")
        raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover

    async def declare_queue(self, name: str, options: QueueOptions | None = None) -> None:
        self._ensure_open("declare a queue")
        options = options or QueueOptions()
        arguments = _queue_arguments(options)
        async with self._admin_lock:
            try:
                async with asyncio.timeout(self.OPERATION_TIMEOUT):
                    # Not registered for re-declaration after a reconnect: queues are durable,
                    # and the consumer of an expiring queue re-declares it on its own channel.
                    await self._on_admin_channel(
                        lambda channel: channel.declare_queue(
                            name, durable=True, arguments=arguments, robust=False
                        )
                    )
            except ChannelPreconditionFailed as exc:
                raise BusError(
                    f"Cannot declare queue {name!r} with arguments {arguments}: it already exists "
                    f"with different ones (RabbitMQ: {_reply_text(exc)}). Declare it with the "
                    "same options, or delete it first."
                ) from exc
            except (TimeoutError, *_TRANSPORT_ERRORS) as exc:
                raise self._unavailable(f"declare queue {name!r}", exc) from exc
        self._queue_options[name] = options

    async def publish(
        self,
        queue: str,
        body: bytes,
        *,
        message_id: str | None = None,
        mandatory: bool = True,
        timeout: float = 5.0,
    ) -> None:
        if self._closed:
            raise BusClosed("Cannot publish: the bus is closed.")
        if self._publish_channel is None:
            raise BusClosed("Cannot publish: the bus is not connected yet; call connect() first.")
        properties = spec.Basic.Properties(
            content_type=JSON_CONTENT_TYPE,
            delivery_mode=_PERSISTENT,
            # Every publish carries an id: the fast path matches a returned message to its
            # publish by it.
            message_id=message_id or uuid.uuid4().hex,
        )
        await self._publish_message(queue, body, properties, mandatory=mandatory, timeout=timeout)

    async def consume(
        self,
        queue: str,
        handler: MessageHandler,
        *,
        prefetch: int | None = None,
        concurrency: int = 1,
        max_deliveries: int = 5,
        on_dead_letter: MessageHandler | None = None,
    ) -> _RabbitSubscription:
        """Consumes `queue` on a channel of its own; `prefetch` None means the bus default."""
        self._ensure_open("consume")
        prefetch = self._prefetch_default if prefetch is None else prefetch
        _check_prefetch(prefetch)
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}.")
        if max_deliveries < 1:
            raise ValueError(f"max_deliveries must be at least 1, got {max_deliveries}.")
        connection = self._connection
        assert connection is not None  # _ensure_open checked it
        options = self._queue_options.get(queue)
        try:
            channel = connection.channel(publisher_confirms=False)
        except RuntimeError as exc:  # no transport: the connection is down right now
            raise self._unavailable(f"consume {queue!r}", exc) from exc
        subscription = _RabbitSubscription(
            self, queue, handler, channel, concurrency, max_deliveries, on_dead_letter
        )
        try:
            async with asyncio.timeout(self.OPERATION_TIMEOUT):
                await channel.initialize()
                await channel.set_qos(prefetch_count=prefetch)
                if options is None:
                    # Declared elsewhere: only check that it exists, its arguments are unknown.
                    amqp_queue = await channel.declare_queue(queue, passive=True)
                else:
                    # With the arguments, so that a reconnect re-creates a queue that expired
                    # while this consumer was away.
                    amqp_queue = await channel.declare_queue(
                        queue, durable=True, arguments=_queue_arguments(options)
                    )
                await subscription.start(amqp_queue)
        except BaseException as exc:
            await subscription.abandon()
            if isinstance(exc, ChannelNotFoundEntity):
                raise Unroutable(f"Cannot consume: no queue named {queue!r}.") from exc
            if isinstance(exc, ChannelPreconditionFailed):
                raise BusError(
                    f"Cannot consume {queue!r}: it exists with other arguments than this bus "
                    f"declared (RabbitMQ: {_reply_text(exc)})."
                ) from exc
            if isinstance(exc, (TimeoutError, *_TRANSPORT_ERRORS)):
                raise self._unavailable(f"consume {queue!r}", exc) from exc
            raise
        self._subscriptions.add(subscription)
        return subscription

    async def delete_queue(self, name: str) -> None:
        self._ensure_open("delete a queue")
        # Our own consumers first: a queue deleted under a robust consumer makes it try to
        # come back forever.
        for subscription in [s for s in self._subscriptions if s.queue_name == name]:
            await subscription.cancel()
        async with self._admin_lock:
            try:
                async with asyncio.timeout(self.OPERATION_TIMEOUT):
                    await self._on_admin_channel(lambda channel: channel.queue_delete(name))
            except (TimeoutError, *_TRANSPORT_ERRORS) as exc:
                raise self._unavailable(f"delete queue {name!r}", exc) from exc
        self._queue_options.pop(name, None)

    async def close(self) -> None:
        if self._closing or self._closed:
            await self._closed_event.wait()
            return
        self._closing = True
        try:
            for subscription in list(self._subscriptions):
                await subscription.cancel()
        finally:
            self._closed = True
            connection, self._connection = self._connection, None
            self._publish_channel = None
            self._admin_channel = None
            try:
                if connection is not None:
                    # A close that is being cancelled (it ran out of time) lets go at once: the
                    # call stops the reconnecting, the farewell to RabbitMQ is a courtesy.
                    hurry = _cancelled_by_caller()
                    await self._close_connection(
                        connection, self.HURRIED_CLOSE_TIMEOUT if hurry else self.CLOSE_TIMEOUT
                    )
                    log.info("Disconnected from RabbitMQ at %s", self._where)
            finally:
                # Also when a close that ran out of time is cancelled: others wait for this.
                self._closed_event.set()

    # -- internals shared with the subscriptions -------------------------------------------

    def forget(self, subscription: _RabbitSubscription) -> None:
        self._subscriptions.discard(subscription)

    async def retry_later(
        self,
        queue: str,
        message: InboundMessage,
        attempt: int,
        max_deliveries: int,
        on_dead_letter: MessageHandler | None = None,
    ) -> bool:
        """Settles a message whose attempt failed: a counted copy at the tail, or dead-lettered.

        Returns True when the counted copy is in the queue and the original was acked."""
        if attempt >= max_deliveries:
            await self._dead_letter(queue, message, attempt, on_dead_letter)
            return False
        headers: HeadersType = dict(message.headers or {})
        headers[ATTEMPT_HEADER] = attempt + 1
        try:
            # Confirmed first, acked after: a crash in between duplicates, never loses.
            await self._publish_message(
                queue,
                message.body,
                _copy(message, headers),
                mandatory=True,
                timeout=self.REPUBLISH_TIMEOUT,
            )
        except BusError as exc:
            log.warning(
                "Could not requeue message %s on %s for attempt %d (%s); the broker gets it "
                "back uncounted",
                message.message_id,
                queue,
                attempt + 1,
                exc,
            )
            await _settle(message.nack(requeue=True), message, queue)
            return False
        await _settle(message.ack(), message, queue)
        return True

    async def give_back(self, queue: str, message: InboundMessage) -> None:
        """Puts a message no handler started on back as it was: an uncounted copy at the tail
        (so that it does not come back looking unsettled), then the original is acked."""
        try:
            await self._publish_message(
                queue,
                message.body,
                _copy(message, dict(message.headers or {})),
                mandatory=True,
                timeout=self.CLOSE_TIMEOUT,
            )
        except BusError as exc:
            log.info("Could not give back message %s on %s (%s)", message.message_id, queue, exc)
            await _settle(message.nack(requeue=True), message, queue)
            return
        await _settle(message.ack(), message, queue)

    async def _dead_letter(
        self,
        queue: str,
        message: InboundMessage,
        attempt: int,
        on_dead_letter: MessageHandler | None,
    ) -> None:
        if on_dead_letter is not None:
            await notify_dead_letter(on_dead_letter, _delivery(queue, message, attempt))
        options = self._queue_options.get(queue)
        if options is None:
            # Declared by someone else: the broker applies the queue's own dead-letter
            # arguments, if it has any, when the message is rejected.
            log.warning(
                "Message %s left %s after %d failed deliveries (rejected: dead-lettered by "
                "RabbitMQ if the queue has a dead-letter exchange, else dropped)",
                message.message_id,
                queue,
                attempt,
            )
            await _settle(message.reject(requeue=False), message, queue)
            return
        target = options.dead_letter_queue
        if target is None:
            log.warning(
                "Message %s dropped from %s after %d failed deliveries (the queue has no "
                "dead-letter queue)",
                message.message_id,
                queue,
                attempt,
            )
            await _settle(message.ack(), message, queue)
            return
        headers: HeadersType = {
            key: value for key, value in (message.headers or {}).items() if key != ATTEMPT_HEADER
        }
        headers[DEAD_LETTERED_FROM_HEADER] = queue
        try:
            await self._publish_message(
                target,
                message.body,
                _copy(message, headers),
                mandatory=True,
                timeout=self.REPUBLISH_TIMEOUT,
            )
        except Unroutable:
            log.warning(
                "Message %s dropped from %s after %d failed deliveries (its dead-letter queue "
                "%s does not exist)",
                message.message_id,
                queue,
                attempt,
                target,
            )
        except BusError as exc:
            log.warning(
                "Could not dead-letter message %s from %s to %s (%s); the broker gets it back",
                message.message_id,
                queue,
                target,
                exc,
            )
            await _settle(message.nack(requeue=True), message, queue)
            return
        else:
            log.warning(
                "Message %s moved from %s to %s after %d failed deliveries",
                message.message_id,
                queue,
                target,
                attempt,
            )
        await _settle(message.ack(), message, queue)

    # -- internals ----------------------------------------------------------------------------

    async def _publish_message(
        self,
        queue: str,
        body: bytes,
        properties: spec.Basic.Properties,
        *,
        mandatory: bool,
        timeout: float,
    ) -> None:
        channel = self._publish_channel
        if channel is None or self._closed:
            raise BusClosed("Cannot publish: the bus is closed.")
        # A returned (unroutable) message is matched to its publish by message_id, so two
        # publishes with the same id in flight at once could swap their outcomes: one would be
        # reported stored while it was returned. Such publishes take turns; others never wait.
        message_id = properties.message_id or ""
        try:
            async with asyncio.timeout(timeout):
                await self._publishing_ids.take(message_id)
                try:
                    await self._send(channel, queue, body, properties, mandatory)
                finally:
                    self._publishing_ids.give_back(message_id)
        except Returned as exc:
            raise Unroutable(f"No queue named {queue!r} takes this message.") from exc
        except Refused as exc:
            raise BusUnavailable(
                f"RabbitMQ at {self._where} refused to store the message for {queue!r}."
            ) from exc
        except TimeoutError as exc:
            if self._closed:
                raise BusClosed("Cannot publish: the bus was closed while publishing.") from exc
            if self.is_connected:
                raise BusUnavailable(
                    f"RabbitMQ at {self._where} did not take or confirm the message for "
                    f"{queue!r} within {timeout:g} s."
                ) from exc
            raise BusUnavailable(
                f"Cannot publish to {queue!r}: RabbitMQ at {self._where} is not reachable "
                f"(gave up after {timeout:g} s)."
            ) from exc
        except _TRANSPORT_ERRORS as exc:
            raise BusUnavailable(
                f"Cannot publish to {queue!r}: the connection to RabbitMQ at {self._where} "
                f"broke before the message was confirmed ({exc!r})."
            ) from exc
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling() == 0:
                # Nobody cancelled us: the channel closed and cancelled the pending confirm.
                raise BusUnavailable(
                    f"Cannot publish to {queue!r}: the channel to RabbitMQ at {self._where} "
                    "closed before the message was confirmed."
                ) from exc
            raise

    async def _send(
        self,
        channel: AbstractRobustChannel,
        queue: str,
        body: bytes,
        properties: spec.Basic.Properties,
        mandatory: bool,
    ) -> None:
        # Through the link's fast path (see `fastpath`), not aio-pika's Message and Exchange
        # wrappers or aiormq's publish, whose machinery showed in every publish.
        while True:
            # Waits while the connection is being restored; the caller's timeout bounds it.
            await channel.ready()
            # The publish below hands the frames over without waiting for them to be written,
            # so nothing else holds a publisher back while RabbitMQ does not read (an alarm, a
            # stalled link): wait until the link takes data, still inside the caller's
            # timeout, so that a publish that times out was never sent and the memory held
            # stays bounded. (No await at all while the link is writable.)
            writable = self._writable()
            if writable is not None and not writable.is_set():
                await writable.wait()
                continue
            publisher = self._publisher
            if publisher is None or publisher.is_closed:
                publisher = self._publisher = await self._open_publisher(channel)
            if publisher is not None:
                try:
                    confirmed = publisher.publish(queue, body, properties, mandatory)
                except ChannelInvalidStateError:
                    # Raised before anything was written, so sending again cannot duplicate.
                    pass
                else:
                    await confirmed
                    return
            await asyncio.sleep(self._RESEND_PAUSE)

    async def _open_publisher(self, channel: AbstractRobustChannel) -> Publisher | None:
        """A publisher on the publish channel's current aiormq channel; None while it is down."""
        underlay = await channel.get_underlay_channel()
        if underlay.is_closed:
            return None
        fast_path = fast_path_of(channel, underlay)
        if fast_path is None:
            return None  # a channel of a link that has just been replaced
        try:
            return fast_path.publisher(underlay, frame_max_of(underlay))
        except ChannelInvalidStateError:
            return None

    def _writable(self) -> asyncio.Event | None:
        connection = self._connection
        return connection.writable() if isinstance(connection, GatheringRobustConnection) else None

    def _ensure_open(self, action: str) -> None:
        if self._closing or self._closed:
            raise BusClosed(f"Cannot {action}: the bus is closed.")
        if self._connection is None:
            raise BusClosed(f"Cannot {action}: the bus is not connected yet; call connect() first.")

    async def _on_admin_channel(
        self, operation: Callable[[AbstractRobustChannel], Awaitable[object]]
    ) -> None:
        channel = self._admin_channel
        if channel is None:
            raise BusClosed("The bus is closed.")
        while True:
            # A refused declaration closes this channel and it reopens by itself; until it
            # has, calls fail before reaching the broker, and declarations and deletions are
            # idempotent, so they are simply tried again (the caller's timeout bounds it).
            await channel.ready()
            if not channel.is_closed:
                try:
                    await operation(channel)
                    return
                except ChannelInvalidStateError:
                    pass
            await asyncio.sleep(self._RESEND_PAUSE)

    def _unavailable(self, action: str, exc: BaseException) -> BusUnavailable:
        if isinstance(exc, TimeoutError):
            return BusUnavailable(
                f"Cannot {action}: RabbitMQ at {self._where} did not answer within "
                f"{self.OPERATION_TIMEOUT:g} s."
            )
        return BusUnavailable(f"Cannot {action}: RabbitMQ at {self._where} failed: {exc!r}.")

    async def _close_connection(
        self, connection: AbstractRobustConnection, timeout: float | None = None
    ) -> None:
        try:
            async with asyncio.timeout(self.CLOSE_TIMEOUT if timeout is None else timeout):
                await connection.close()
        except (TimeoutError, *_TRANSPORT_ERRORS) as exc:
            log.warning("Closing the connection to RabbitMQ at %s failed: %r", self._where, exc)
        except asyncio.CancelledError:
            if _cancelled_by_caller():
                raise
            log.warning("The connection to RabbitMQ at %s died while it was closed", self._where)


class _RabbitSubscription:
    """One consumer: its own channel and prefetch, a local buffer, up to `concurrency` handlers.

    Deliveries are buffered in arrival order and a handler task is started for the oldest one
    whenever a handler slot is free (on arrival, or when a handler ends); with one slot that is
    strict queue order.
    """

    def __init__(
        self,
        bus: RabbitMQBus,
        queue_name: str,
        handler: MessageHandler,
        channel: AbstractRobustChannel,
        concurrency: int,
        max_deliveries: int,
        on_dead_letter: MessageHandler | None = None,
    ) -> None:
        self.queue_name = queue_name
        self._bus = bus
        self._handler = handler
        self._channel = channel
        self._max_deliveries = max_deliveries
        self._on_dead_letter = on_dead_letter
        # Suspects (see the module's docstring) run one at a time.
        self._suspects = asyncio.Lock()
        # Held by message_id while its delivery is handled: a second delivery with that id (a
        # counted copy, a redelivery) waits for it, so the two never run at once.
        self._handling = KeyedTurns()
        # Deliveries waiting for a free handler slot, in delivery order.
        self._buffer: deque[InboundMessage] = deque()
        self._free_slots = concurrency
        self._dispatching = False
        self._in_flight: set[asyncio.Task[None]] = set()
        self._queue: AbstractRobustQueue | None = None
        self._consumer_tag: str | None = None
        self._cancel_lock = asyncio.Lock()
        self._cancelled = False
        # Acks of the deliveries on the current channel (a reconnect brings a new one).
        self._acks: ChannelAcks | None = None

    def __repr__(self) -> str:
        return f"<RabbitMQ subscription to {self.queue_name!r}>"

    async def start(self, queue: AbstractRobustQueue) -> None:
        self._queue = queue
        self._dispatching = True
        self._consumer_tag = await queue.consume(RawConsumer(self._on_message))

    async def cancel(self) -> None:
        """Stops taking new deliveries; those being handled finish and are acked first."""
        async with self._cancel_lock:
            if self._cancelled:
                return
            self._cancelled = True
            self._dispatching = False
            if self._bus.is_connected:
                await self._cancel_consumer()
            # (Without a connection the broker has dropped the consumer already, and closing
            # the channel below keeps a reconnection from bringing it back.)
            # A handler that cancels its own subscription must not wait for itself.
            current = asyncio.current_task()
            running = [task for task in self._in_flight if task is not current]
            if running:
                await asyncio.gather(*running, return_exceptions=True)
            await self._flush_acks()
            await self._give_back_buffered()
            # Whatever is left goes back to the queue with the channel.
            await self._close_channel()
            self._bus.forget(self)

    async def _give_back_buffered(self) -> None:
        # Deliveries buffered but never started are given back as they were: returned with the
        # channel instead, they would come back looking unsettled (as if their consumer had died
        # of them) and be charged an attempt they never had.
        if not self._bus.is_connected:
            return
        try:
            async with asyncio.timeout(RabbitMQBus.CLOSE_TIMEOUT):
                while self._buffer:
                    message = self._buffer.popleft()
                    if not _is_stale(message):
                        await self._bus.give_back(self.queue_name, message)
                        self._settled(message)
        except TimeoutError:
            log.debug("Could not give back every buffered message of %s in time", self.queue_name)

    async def abandon(self) -> None:
        """Undoes a start that failed half-way."""
        self._cancelled = True
        self._dispatching = False
        await self._close_channel()

    def _on_message(self, message: InboundMessage) -> None:
        # Called once per delivery, in delivery order; only buffering keeps that order. Also
        # while cancelling: what arrives until RabbitMQ confirms the cancel is given back.
        channel = _channel_of(message)
        if channel is not None and message.delivery_tag is not None:
            acks = self._acks
            if acks is None or acks.channel is not channel:
                acks = self._acks = ChannelAcks(
                    channel,
                    self.queue_name,
                    _TRANSPORT_ERRORS,
                    fast_path_of(self._channel, channel),
                )
            acks.delivered(message.delivery_tag)
        self._buffer.append(message)
        self._start_waiting()

    def _handled(self, message: InboundMessage) -> None:
        acks, tag = self._acks, message.delivery_tag
        if acks is not None and tag is not None and acks.channel is _channel_of(message):
            acks.handled(tag)
        # (Otherwise its channel died: RabbitMQ has it back and delivers it again.)

    def _settled(self, message: InboundMessage) -> None:
        acks, tag = self._acks, message.delivery_tag
        if acks is not None and tag is not None and acks.channel is _channel_of(message):
            acks.settled(tag)

    async def _flush_acks(self) -> None:
        acks = self._acks
        if acks is None:
            return
        try:
            async with asyncio.timeout(RabbitMQBus.CLOSE_TIMEOUT):
                await acks.flush()
        except TimeoutError:
            log.debug("Could not send every ack of %s in time", self.queue_name)

    def _start_waiting(self) -> None:
        # A handler starts right from the delivery callback or from the end of the handler
        # before it; with one slot that is strict queue order.
        buffer = self._buffer
        while self._dispatching and self._free_slots > 0 and buffer:
            message = buffer.popleft()
            if _is_stale(message):
                # Its channel died (reconnect): the broker has already put it back.
                continue
            self._free_slots -= 1
            task = asyncio.create_task(
                self._handle(message), name=f"rabbitmq-handle-{self.queue_name}"
            )
            self._in_flight.add(task)
            task.add_done_callback(self._on_handled)

    async def _handle(self, message: InboundMessage) -> None:
        key = message.message_id or f"delivery-{id(message)}"
        await self._handling.take(key)
        try:
            await self._handle_one(message)
        finally:
            self._handling.give_back(key)

    async def _handle_one(self, message: InboundMessage) -> None:
        attempt = _attempt_of(message)
        delivery = _delivery(self.queue_name, message, attempt)
        if _unsettled_before(message):
            await self._handle_suspect(message, delivery)
            return
        try:
            await self._handler(delivery)
        except asyncio.CancelledError:
            # Not a failure of the message: give it back as it was (it is charged an attempt
            # only if it is handled again, see _handle_suspect).
            await _settle(message.nack(requeue=True), message, self.queue_name)
            self._settled(message)
            raise
        except NotTaken as reason:
            log.info(
                "Message %s on %s given back untouched: %s",
                message.message_id,
                self.queue_name,
                reason,
            )
            await self._bus.give_back(self.queue_name, message)
            self._settled(message)
        except Requeue as reason:
            log.info(
                "Message %s on %s handed back (attempt %d of %d): %s",
                message.message_id,
                self.queue_name,
                attempt,
                self._max_deliveries,
                reason,
            )
            await self._bus.retry_later(
                self.queue_name, message, attempt, self._max_deliveries, self._on_dead_letter
            )
            self._settled(message)
        except BusUnavailable as exc:
            # The bus itself failed under the handler (an outage): not the message's fault, so
            # it goes back uncounted; it also returns by itself if the channel is gone.
            log.warning(
                "Message %s on %s goes back to the queue: the bus failed while it was handled (%s)",
                message.message_id,
                self.queue_name,
                exc,
            )
            await _settle(message.nack(requeue=True), message, self.queue_name)
            self._settled(message)
        except Exception:
            log.exception(
                "Handler failed for message %s on %s (attempt %d of %d)",
                message.message_id,
                self.queue_name,
                attempt,
                self._max_deliveries,
            )
            await self._bus.retry_later(
                self.queue_name, message, attempt, self._max_deliveries, self._on_dead_letter
            )
            self._settled(message)
        else:
            self._handled(message)

    async def _handle_suspect(self, message: InboundMessage, delivery: Delivery) -> None:
        async with self._suspects:
            log.info(
                "Message %s on %s came back unsettled (attempt %d of %d); charging it first",
                message.message_id,
                self.queue_name,
                delivery.attempt,
                self._max_deliveries,
            )
            charged = await self._bus.retry_later(
                self.queue_name,
                message,
                delivery.attempt,
                self._max_deliveries,
                self._on_dead_letter,
            )
            self._settled(message)
            if not charged:
                return  # dead-lettered, or back with RabbitMQ to be tried again
            try:
                await self._handler(delivery)
            except Exception as exc:
                # The charged copy in the queue is its next attempt.
                log.info(
                    "Handler failed for message %s on %s; its counted copy retries it: %r",
                    message.message_id,
                    self.queue_name,
                    exc,
                )

    def _on_handled(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._free_slots += 1
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("Settling a delivery on %s failed", self.queue_name, exc_info=exc)
        self._start_waiting()

    async def _cancel_consumer(self) -> None:
        queue, tag = self._queue, self._consumer_tag
        if queue is None or tag is None:
            return
        try:
            async with asyncio.timeout(RabbitMQBus.CLOSE_TIMEOUT):
                # Also forgets the consumer, so a reconnect does not bring it back.
                await queue.cancel(tag)
        except (TimeoutError, *_TRANSPORT_ERRORS) as exc:
            log.debug("Cancelling the consumer of %s failed: %r", self.queue_name, exc)
        except asyncio.CancelledError:
            if _cancelled_by_caller():
                raise
            log.debug("The channel of %s died while its consumer was cancelled", self.queue_name)

    async def _close_channel(self) -> None:
        if not self._channel.is_initialized:
            return
        try:
            async with asyncio.timeout(RabbitMQBus.CLOSE_TIMEOUT):
                await self._channel.close()
        except (TimeoutError, *_TRANSPORT_ERRORS) as exc:
            log.debug("Closing the channel of %s failed: %r", self.queue_name, exc)
        except asyncio.CancelledError:
            if _cancelled_by_caller():
                raise
            log.debug("The channel of %s died while it was closed", self.queue_name)


def _cancelled_by_caller() -> bool:
    """For a CancelledError: True when this task was cancelled, False when nobody did (the
    connection or channel died, and aiormq cancelled the call waiting on it)."""
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


async def _settle(operation: Awaitable[None], message: InboundMessage, queue: str) -> None:
    """Sends an ack/nack/reject; a dead channel means the broker already took the message back."""
    try:
        await operation
    except _TRANSPORT_ERRORS as exc:
        log.info(
            "Could not settle message %s on %s (%r); RabbitMQ will deliver it again",
            message.message_id,
            queue,
            exc,
        )


def _channel_of(message: InboundMessage) -> AbstractChannel | None:
    """The aiormq channel a message came on, or None once that channel has closed."""
    try:
        return message.channel
    except ChannelInvalidStateError:
        return None


def _is_stale(message: InboundMessage) -> bool:
    try:
        return message.channel.is_closed
    except ChannelInvalidStateError:
        return True


def _unsettled_before(message: InboundMessage) -> bool:
    """Handed out before and never settled: its consumer died with it, or gave it back.

    Quorum queues count such deliveries themselves (x-delivery-count); classic queues only
    flag them as redelivered."""
    return bool(message.redelivered) and "x-delivery-count" not in (message.headers or {})


def _delivery(queue: str, message: InboundMessage, attempt: int) -> Delivery:
    return Delivery(
        queue=queue,
        body=message.body,
        message_id=message.message_id,
        redelivered=bool(message.redelivered) or attempt > 1,
        attempt=attempt,
    )


def _attempt_of(message: InboundMessage) -> int:
    headers = message.headers or {}
    attempt = _as_int(headers.get(ATTEMPT_HEADER)) or 1
    # Quorum queues count deliveries themselves (including those lost to a crash).
    delivery_count = _as_int(headers.get("x-delivery-count"))
    if delivery_count is not None:
        attempt = max(attempt, delivery_count + 1)
    return max(attempt, 1)


def _as_int(value: FieldValue | None) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def _copy(message: InboundMessage, headers: HeadersType) -> spec.Basic.Properties:
    """The properties of a copy of `message` with `headers`."""
    original = message.properties
    # user_id is left out: RabbitMQ refuses a user_id other than the publishing connection's.
    return spec.Basic.Properties(
        content_type=original.content_type or JSON_CONTENT_TYPE,
        content_encoding=original.content_encoding,
        headers=headers,
        delivery_mode=_PERSISTENT,
        priority=original.priority,
        correlation_id=original.correlation_id,
        reply_to=original.reply_to,
        expiration=original.expiration,
        message_id=original.message_id or uuid.uuid4().hex,
        timestamp=original.timestamp,
        message_type=original.message_type,
        app_id=original.app_id,
    )


def _queue_arguments(options: QueueOptions) -> dict[str, FieldValue]:
    arguments: dict[str, FieldValue] = {}
    if options.message_ttl_ms is not None:
        arguments["x-message-ttl"] = options.message_ttl_ms
    if options.dead_letter_queue is not None:
        # The default exchange routes by queue name, so this names the dead-letter queue.
        arguments["x-dead-letter-exchange"] = ""
        arguments["x-dead-letter-routing-key"] = options.dead_letter_queue
    if options.expires_ms is not None:
        arguments["x-expires"] = options.expires_ms
    return arguments


def _check_prefetch(prefetch: int) -> None:
    if not 1 <= prefetch <= 65535:
        raise ValueError(f"prefetch must be between 1 and 65535, got {prefetch}.")


def _describe(url: str) -> str:
    """host:port/vhost of an AMQP URL, without the credentials."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = parts.port or (5671 if parts.scheme == "amqps" else 5672)
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    return f"{host}:{port}/{vhost}" if vhost != "/" else f"{host}:{port} (vhost /)"


def _connect_failure(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, (ProbableAuthenticationError, InvalidFrameError)):
        # RabbitMQ closes the handshake without a reason for bad credentials, and answers an
        # unknown or forbidden vhost with Connection.Close instead of OpenOk.
        return (
            "RabbitMQ refused the connection (wrong user or password, or the vhost does not "
            "exist or is not permitted for the user)"
        )
    return str(exc) or repr(exc)


def _reply_text(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
