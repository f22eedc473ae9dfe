"""The RabbitMQ bus: durable queues, persistent confirmed publishes, manual acks.

One robust connection carries three kinds of channel:

- one publishing channel with publisher confirms, shared by every concurrent publisher (many
  confirms can be in flight on one channel, so publishers never wait for each other's round
  trip);
- one channel for declaring and deleting queues and topic exchanges, so that a refused
  declaration (RabbitMQ closes the channel on PRECONDITION_FAILED) never fails the publishes in
  flight;
- one channel per consumer and per listener, each with its own prefetch (set up in
  `consuming.py`, run by `subscription.py`).

Broadcasts go through a durable fanout exchange per topic, `agentcomm.<topic>`, on the
publishing channel (confirmed, not persistent, not mandatory); each listener has an exclusive,
auto-delete classic queue of its own bound to it.

Messages get onto the link and off it through a wire (`wire/`): the bus's own AMQP framing by
default, plain aio-pika with `fast_path=False` (RABBITMQ_FAST_PATH=0). Redelivery — attempts,
dead-lettering, suspects — is `redelivery.py`, the same on either wire.

The connection reconnects by itself and the channels and consumers come back with it (a
consumer re-declares the queue it consumes, so a queue this bus declared and that expired
meanwhile is created again; a listener declares and binds its queue again, which lost what was
broadcast meanwhile). Then the owner's `on_reconnect` callbacks run. With several RabbitMQ
nodes (`hosts`), each reconnection goes to the next node that takes it (`nodes.py`).

Publishing while the connection is down waits for it up to the publish's timeout, then raises
BusUnavailable; so does publishing while RabbitMQ reads nothing (a resource alarm, a stalled
link), and on the framed wire a publish that timed out that way was never sent.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence

from aio_pika.abc import (
    AbstractRobustChannel,
    AbstractRobustConnection,
)
from aiormq import spec
from yarl import URL

from agentcomm.bus.base import (
    BusClosed,
    BusUnavailable,
    MessageHandler,
    QueueOptions,
    QueueStats,
)
from agentcomm.bus.rabbitmq import consuming, topics
from agentcomm.bus.rabbitmq.connection import (
    cancelled_by_caller,
    close_connection,
    connect_with_retries,
    describe,
    open_channels,
)
from agentcomm.bus.rabbitmq.deliveries import JSON_CONTENT_TYPE, PERSISTENT, TRANSIENT
from agentcomm.bus.rabbitmq.nodes import Node, Nodes
from agentcomm.bus.rabbitmq.publishing import ConfirmedPublisher
from agentcomm.bus.rabbitmq.queues import Queues, QueueType, check_prefetch
from agentcomm.bus.rabbitmq.redelivery import Redeliveries
from agentcomm.bus.rabbitmq.subscription import ListenerSubscription, RabbitSubscription
from agentcomm.bus.rabbitmq.wire.base import Wire
from agentcomm.bus.rabbitmq.wire.framed import FramedWire
from agentcomm.bus.rabbitmq.wire.plain import PlainWire

# The name operators filter on; it was the module's own name before the bus became a package.
log = logging.getLogger("agentcomm.bus.rabbitmq")


class RabbitMQBus:
    """The production bus: RabbitMQ through one robust aio-pika connection.

    `url` is an AMQP URL (`amqp://user:password@host:port/vhost`); `hosts`, when given, are the
    (host, port) of a RabbitMQ cluster's nodes, tried in turn at start and on every reconnect
    in place of the URL's own (see `nodes.py`). `connect_attempts` bounds the retries at start
    (exponential backoff between them); after a successful start the connection reconnects by
    itself for as long as the bus is open. `prefetch_default` is the prefetch of a
    consumer that does not ask for one. `name` is shown as the connection name in RabbitMQ.
    `heartbeat` (seconds, unless the URL sets it) is proposed to RabbitMQ; a connection that
    stays silent for about three heartbeats is taken for dead and reconnected. `fast_path`
    False runs it on plain aio-pika publishes and consumers instead of the bus's own AMQP
    framing (see `wire/`). `queue_type` is the type of the durable queues it declares:
    "classic", or "quorum" for queues replicated over a RabbitMQ cluster (see `queues.py`).
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

    def __init__(
        self,
        url: str,
        *,
        connect_attempts: int = 10,
        prefetch_default: int = 200,
        name: str = "agentcomm",
        heartbeat: int | None = None,
        fast_path: bool = True,
        queue_type: QueueType = "classic",
        hosts: Sequence[tuple[str, int]] = (),
    ) -> None:
        if connect_attempts < 1:
            raise ValueError(f"connect_attempts must be at least 1, got {connect_attempts}.")
        check_prefetch(prefetch_default)
        if hosts:
            # The URL names the first node too: with one node, the plain wire connects to the
            # URL as aio-pika does.
            host, port = hosts[0]
            url = str(URL(url).with_host(host).with_port(port))
        self._url = url
        # Where the connection may go: the URL's host, or the nodes of a cluster in turn.
        self._nodes = (
            Nodes([Node(host, port) for host, port in hosts]) if hosts else Nodes.of_url(url)
        )
        self._where = describe(url, self._nodes)
        self._connect_attempts = connect_attempts
        self._prefetch_default = prefetch_default
        self._heartbeat = heartbeat
        self._name = name
        # Puts this bus's messages on its link and takes them off (shared with subscriptions).
        self.wire: Wire = FramedWire() if fast_path else PlainWire()
        self._connection: AbstractRobustConnection | None = None
        self._publish_channel: AbstractRobustChannel | None = None
        self._queues = Queues(self._unavailable, self.OPERATION_TIMEOUT, queue_type)
        self._connect_lock = asyncio.Lock()
        self._subscriptions: set[RabbitSubscription] = set()
        self._publisher = ConfirmedPublisher(
            self.wire,
            channel=lambda: self._publish_channel,
            closed=lambda: self._closed,
            connected=lambda: self.is_connected,
            where=self._where,
        )
        # Settles what handlers failed on (shared with subscriptions).
        self.redeliveries = Redeliveries(
            self._publish_message,
            self._queues.options,
            republish_timeout=self.REPUBLISH_TIMEOUT,
            give_back_timeout=self.CLOSE_TIMEOUT,
        )
        # While closing, handlers still running may publish their results; new consumers and
        # declarations are refused. Once closed, everything is refused.
        self._closing = False
        self._closed = False
        self._closed_event = asyncio.Event()
        # Told when the connection came back after a loss (on_reconnect).
        self._reconnect_callbacks: list[Callable[[], None]] = []

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
            connection = await connect_with_retries(
                self.wire,
                self._url,
                self._nodes,
                name=self._name,
                attempts=self._connect_attempts,
                heartbeat=self._heartbeat,
                timeout=self.CONNECT_TIMEOUT,
                backoff=(self.BACKOFF_FIRST, self.BACKOFF_MAX),
                reconnect_interval=self.RECONNECT_INTERVAL,
                closed=lambda: self._closing or self._closed,
            )
            if self._closing or self._closed:
                # close() ran while we were connecting.
                await close_connection(connection, self._where, self.CLOSE_TIMEOUT)
                raise BusClosed("Cannot connect: the bus was closed while connecting.")
            publish_channel, admin_channel = await open_channels(
                connection, self._where, self.OPERATION_TIMEOUT, self.CLOSE_TIMEOUT
            )
            if self._closing or self._closed:
                await close_connection(connection, self._where, self.CLOSE_TIMEOUT)
                raise BusClosed("Cannot connect: the bus was closed while connecting.")
            self._connection = connection
            self._publish_channel = publish_channel
            self._queues.channel = admin_channel
            # aio-pika calls these once the channels, queues and consumers are restored.
            connection.reconnect_callbacks.add(self._reconnected)
            log.info("Connected to RabbitMQ at %s", self._on_node())

    async def declare_queue(self, name: str, options: QueueOptions | None = None) -> None:
        self._ensure_open("declare a queue")
        await self._queues.declare(name, options or QueueOptions())

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
        if self._closed:
            raise BusClosed("Cannot publish: the bus is closed.")
        if self._publish_channel is None:
            raise BusClosed("Cannot publish: the bus is not connected yet; call connect() first.")
        properties = spec.Basic.Properties(
            content_type=JSON_CONTENT_TYPE,
            delivery_mode=PERSISTENT if persistent else TRANSIENT,
            # Every publish carries an id: the fast path matches a returned message to its
            # publish by it.
            message_id=message_id or uuid.uuid4().hex,
            headers=dict(headers) if headers else None,
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
    ) -> RabbitSubscription:
        """Consumes `queue` on a channel of its own; `prefetch` None means the bus default
        (see `consuming.py`)."""
        return await consuming.consume(
            self,
            queue,
            handler,
            prefetch=prefetch,
            concurrency=concurrency,
            max_deliveries=max_deliveries,
            on_dead_letter=on_dead_letter,
        )

    async def broadcast(
        self,
        topic: str,
        body: bytes,
        *,
        message_id: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        """Publishes to the topic's fanout exchange (see `topics.py`)."""
        await topics.broadcast(self, topic, body, message_id=message_id, timeout=timeout)

    async def listen(
        self, topic: str, handler: MessageHandler, *, prefetch: int | None = None
    ) -> ListenerSubscription:
        """Listens through a queue of its own bound to the topic's exchange (see `topics.py`)."""
        return await topics.listen(self, topic, handler, prefetch=prefetch)

    def on_reconnect(self, callback: Callable[[], None]) -> None:
        self._reconnect_callbacks.append(callback)

    async def queue_stats(self, name: str) -> QueueStats | None:
        """What RabbitMQ tells of `name` (messages ready, consumers); None when it does not
        exist or the bus cannot ask now."""
        if self._closing or self._closed or self._connection is None:
            return None
        return await self._queues.stats(name)

    async def delete_queue(self, name: str) -> None:
        self._ensure_open("delete a queue")
        # Our own consumers first: a queue deleted under a robust consumer makes it try to
        # come back forever.
        for subscription in [s for s in self._subscriptions if s.queue_name == name]:
            await subscription.cancel()
        await self._queues.delete(name)

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
            await self._publisher.stop()
            connection, self._connection = self._connection, None
            self._publish_channel = None
            self._queues.channel = None
            try:
                if connection is not None:
                    # A close that is being cancelled (it ran out of time) lets go at once: the
                    # call stops the reconnecting, the farewell to RabbitMQ is a courtesy.
                    hurry = cancelled_by_caller()
                    await close_connection(
                        connection,
                        self._where,
                        self.HURRIED_CLOSE_TIMEOUT if hurry else self.CLOSE_TIMEOUT,
                    )
                    log.info("Disconnected from RabbitMQ at %s", self._where)
            finally:
                # Also when a close that ran out of time is cancelled: others wait for this.
                self._closed_event.set()

    # -- internals shared with the subscriptions -------------------------------------------

    def forget(self, subscription: RabbitSubscription) -> None:
        self._subscriptions.discard(subscription)

    # -- internals ----------------------------------------------------------------------------

    def _new_channel(self, action: str) -> AbstractRobustChannel:
        connection = self._connection
        assert connection is not None  # the caller's _ensure_open checked it
        try:
            return connection.channel(publisher_confirms=False)
        except RuntimeError as exc:  # no transport: the connection is down right now
            raise self._unavailable(action, exc) from exc

    def _reconnected(self, *_: object) -> None:
        log.info("Reconnected to RabbitMQ at %s", self._on_node())
        for callback in list(self._reconnect_callbacks):
            try:
                callback()
            except Exception:
                log.exception("A callback on reconnecting to RabbitMQ failed")

    async def _publish_message(
        self,
        queue: str,
        body: bytes,
        properties: spec.Basic.Properties,
        *,
        mandatory: bool,
        timeout: float,
        exchange: str = "",
    ) -> None:
        """Publishes to `queue` (or through `exchange`) and waits for the confirm."""
        await self._publisher.send(
            queue, body, properties, mandatory=mandatory, timeout=timeout, exchange=exchange
        )

    def _on_node(self) -> str:
        """The node the connection is on, for the log."""
        return describe(self._url, self._nodes.current)

    def _ensure_open(self, action: str) -> None:
        if self._closing or self._closed:
            raise BusClosed(f"Cannot {action}: the bus is closed.")
        if self._connection is None:
            raise BusClosed(f"Cannot {action}: the bus is not connected yet; call connect() first.")

    def _unavailable(self, action: str, exc: BaseException) -> BusUnavailable:
        if isinstance(exc, TimeoutError):
            return BusUnavailable(
                f"Cannot {action}: RabbitMQ at {self._where} did not answer within "
                f"{self.OPERATION_TIMEOUT:g} s."
            )
        return BusUnavailable(f"Cannot {action}: RabbitMQ at {self._where} failed: {exc!r}.")
