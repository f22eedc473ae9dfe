"""The in-process bus: the same contract as RabbitMQ, inside one event loop.

It is what `agentcomm dev` and the quick start run on, so it is a product feature with the same
semantics as the RabbitMQ bus (confirmed publishes, ack after handling, bounded redelivery, TTL
with dead-lettering, broadcasts to the listeners of a topic), checked by the same contract
tests. Its connection cannot be lost, so it never calls `on_reconnect`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from agentcomm.bus.base import (
    BusClosed,
    BusError,
    Delivery,
    MessageHandler,
    QueueOptions,
    QueueStats,
    Redelivery,
    Unroutable,
    Verdict,
    check_topic,
    notify_dead_letter,
    report_dropped,
)

log = logging.getLogger(__name__)

_EXPIRY_SWEEP_SECONDS = 0.5


@dataclass(slots=True)
class _Stored:
    body: bytes
    message_id: str | None
    enqueued_at: float
    attempt: int = 0
    headers: Mapping[str, str] | None = None


@dataclass(slots=True)
class _Queue:
    name: str
    options: QueueOptions
    messages: deque[_Stored] = field(default_factory=deque)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)


class InMemoryBus:
    """A bus that lives in this process; every queue is lost when the process ends."""

    def __init__(self) -> None:
        self._queues: dict[str, _Queue] = {}
        self._subscriptions: set[_MemorySubscription] = set()
        # The listeners of each topic, each with a queue of its own outside `_queues`.
        self._listeners: dict[str, set[_MemoryListener]] = {}
        self._listener_numbers = itertools.count(1)
        self._connected = False
        # While closing, handlers still running may publish their results; new consumers and
        # declarations are refused. Once closed, everything is refused.
        self._closing = False
        self._closed = False
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def is_connected(self) -> bool:
        return self._connected and not self._closed

    async def connect(self) -> None:
        if self._closing or self._closed:
            raise BusClosed("Cannot connect: the bus is closed.")
        if self._connected:
            return
        self._connected = True
        self._sweeper = asyncio.create_task(self._sweep_expired(), name="memory-bus-expiry")

    async def declare_queue(self, name: str, options: QueueOptions | None = None) -> None:
        self._ensure_open("declare a queue")
        options = options or QueueOptions()
        existing = self._queues.get(name)
        if existing is None:
            self._queues[name] = _Queue(name, options)
        elif existing.options != options:
            # As RabbitMQ does: a queue keeps the arguments it was created with.
            raise BusError(
                f"Cannot declare queue {name!r} with {options}: it already exists with "
                f"{existing.options}. Declare it with the same options, or delete it first."
            )

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
        # Nothing here outlives the process: persistent or not is the same.
        if self._closed:
            raise BusClosed("Cannot publish: the bus is closed.")
        if not self._connected:
            raise BusClosed("Cannot publish: the bus is not connected yet.")
        target = self._queues.get(queue)
        if target is None:
            if mandatory:
                raise Unroutable(f"No queue named {queue!r} takes this message.")
            return
        # RabbitMQ always carries an id (aiormq invents one); so does this bus.
        stored = _Stored(body, message_id or uuid.uuid4().hex, time.monotonic(), headers=headers)
        await self._append(target, stored)

    async def consume(
        self,
        queue: str,
        handler: MessageHandler,
        *,
        prefetch: int | None = None,
        concurrency: int = 1,
        max_deliveries: int = 5,
        on_dead_letter: MessageHandler | None = None,
    ) -> _MemorySubscription:
        self._ensure_open("consume")
        target = self._queues.get(queue)
        if target is None:
            raise Unroutable(f"Cannot consume: no queue named {queue!r}.")
        subscription = _MemorySubscription(
            self,
            target,
            handler,
            max(1, min(prefetch or concurrency, concurrency)),
            max_deliveries,
            on_dead_letter,
        )
        self._subscriptions.add(subscription)
        subscription.start()
        return subscription

    async def broadcast(
        self,
        topic: str,
        body: bytes,
        *,
        message_id: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        check_topic(topic)
        if self._closed:
            raise BusClosed("Cannot broadcast: the bus is closed.")
        if not self._connected:
            raise BusClosed("Cannot broadcast: the bus is not connected yet.")
        message_id = message_id or uuid.uuid4().hex
        now = time.monotonic()
        for listener in list(self._listeners.get(topic, ())):
            # Each listener its own copy: a stored message counts its own attempts.
            await self._append(listener.queue, _Stored(body, message_id, now))

    async def listen(
        self, topic: str, handler: MessageHandler, *, prefetch: int | None = None
    ) -> _MemoryListener:
        check_topic(topic)
        self._ensure_open("listen")
        queue = _Queue(f"{topic}.listener-{next(self._listener_numbers)}", QueueOptions())
        listener = _MemoryListener(self, topic, queue, handler)
        self._listeners.setdefault(topic, set()).add(listener)
        self._subscriptions.add(listener)
        listener.start()
        return listener

    def on_reconnect(self, callback: Callable[[], None]) -> None:
        # Nothing to lose in one process: the callback is never due.
        return

    async def queue_stats(self, name: str) -> QueueStats | None:
        """How many messages wait in `name` and how many consumers it has; None when no
        such queue exists."""
        queue = self._queues.get(name)
        if queue is None:
            return None
        consumers = sum(1 for s in self._subscriptions if s.queue is queue)
        return QueueStats(len(queue.messages), consumers)

    async def delete_queue(self, name: str) -> None:
        self._ensure_open("delete a queue")
        queue = self._queues.pop(name, None)
        if queue is None:
            return
        for subscription in [s for s in self._subscriptions if s.queue is queue]:
            await subscription.cancel()

    async def close(self) -> None:
        if self._closing or self._closed:
            return
        self._closing = True
        try:
            for subscription in list(self._subscriptions):
                await subscription.cancel()
        finally:
            self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper

    def depth(self, name: str) -> int:
        """Messages waiting in a queue (not those being handled); for tests and metrics."""
        queue = self._queues.get(name)
        return len(queue.messages) if queue else 0

    def forget(self, subscription: _MemorySubscription) -> None:
        self._subscriptions.discard(subscription)
        if isinstance(subscription, _MemoryListener):
            listeners = self._listeners.get(subscription.topic)
            if listeners is not None:
                listeners.discard(subscription)
                if not listeners:
                    del self._listeners[subscription.topic]

    async def put_back(self, queue: _Queue, stored: _Stored) -> None:
        """Back at the head of its queue, to be handed out next."""
        async with queue.changed:
            queue.messages.appendleft(stored)
            queue.changed.notify()

    async def give_up(
        self, queue: _Queue, stored: _Stored, on_dead_letter: MessageHandler | None
    ) -> None:
        """A message out of attempts leaves its queue, for the dead-letter queue if it has one."""
        log.warning(
            "Message %s left %s after %d failed deliveries",
            stored.message_id,
            queue.name,
            stored.attempt,
        )
        if on_dead_letter is not None:
            await notify_dead_letter(on_dead_letter, _delivery(queue.name, stored))
        await self._dead_letter(queue, stored)

    async def _append(self, queue: _Queue, stored: _Stored) -> None:
        async with queue.changed:
            queue.messages.append(stored)
            queue.changed.notify()

    async def _dead_letter(self, queue: _Queue, stored: _Stored) -> None:
        target_name = queue.options.dead_letter_queue
        target = self._queues.get(target_name) if target_name else None
        if target is not None:
            await self._append(
                target,
                _Stored(stored.body, stored.message_id, time.monotonic(), headers=stored.headers),
            )

    async def _sweep_expired(self) -> None:
        while True:
            await asyncio.sleep(_EXPIRY_SWEEP_SECONDS)
            now = time.monotonic()
            for queue in list(self._queues.values()):
                ttl_ms = queue.options.message_ttl_ms
                if ttl_ms is None:
                    continue
                while queue.messages and (now - queue.messages[0].enqueued_at) * 1000 >= ttl_ms:
                    await self._dead_letter(queue, queue.messages.popleft())

    def _ensure_open(self, action: str) -> None:
        if self._closing or self._closed:
            raise BusClosed(f"Cannot {action}: the bus is closed.")
        if not self._connected:
            raise BusClosed(f"Cannot {action}: the bus is not connected yet.")


class _MemorySubscription:
    def __init__(
        self,
        bus: InMemoryBus,
        queue: _Queue,
        handler: MessageHandler,
        concurrency: int,
        max_deliveries: int,
        on_dead_letter: MessageHandler | None = None,
    ) -> None:
        self.queue = queue
        self._bus = bus
        self._handler = handler
        self._on_dead_letter = on_dead_letter
        self._slots = asyncio.Semaphore(concurrency)
        self._redelivery = Redelivery(max_deliveries)
        self._in_flight: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._loop_task = asyncio.create_task(
            self._take_messages(), name=f"memory-consume-{self.queue.name}"
        )

    async def cancel(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)
        self._bus.forget(self)

    async def _take_messages(self) -> None:
        queue = self.queue
        while True:
            await self._slots.acquire()
            try:
                async with queue.changed:
                    await queue.changed.wait_for(lambda: bool(queue.messages))
                    stored = queue.messages.popleft()
            except BaseException:
                self._slots.release()
                raise
            stored.attempt += 1
            task = asyncio.create_task(self._handle(stored))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

    async def _handle(self, stored: _Stored) -> None:
        delivery = _delivery(self.queue.name, stored)
        try:
            await self._handler(delivery)
        except (Exception, asyncio.CancelledError) as exc:
            verdict = self._redelivery.after(exc, stored.attempt)
            self._redelivery.report(log, verdict, exc, delivery)
            await self._settle_failed(stored, verdict)
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            self._slots.release()

    async def _settle_failed(self, stored: _Stored, verdict: Verdict) -> None:
        if verdict is Verdict.UNTOUCHED or verdict is Verdict.BUS_FAILED:
            stored.attempt -= 1  # uncounted
        elif verdict is Verdict.CUT_OFF:
            # In one process a handler cut off is seen at once, so it is counted at once.
            verdict = self._redelivery.charge(stored.attempt)
        if verdict is Verdict.DEAD_LETTER:
            await self._bus.give_up(self.queue, stored, self._on_dead_letter)
        else:
            await self._bus.put_back(self.queue, stored)


class _MemoryListener(_MemorySubscription):
    """A listener of a topic: its own queue, one message at a time, failures dropped."""

    def __init__(
        self, bus: InMemoryBus, topic: str, queue: _Queue, handler: MessageHandler
    ) -> None:
        super().__init__(bus, queue, handler, concurrency=1, max_deliveries=1)
        self.topic = topic

    async def _handle(self, stored: _Stored) -> None:
        delivery = _delivery(self.topic, stored)
        try:
            await self._handler(delivery)
        except (Exception, asyncio.CancelledError) as exc:
            report_dropped(log, exc, delivery)
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            self._slots.release()


def _delivery(queue: str, stored: _Stored) -> Delivery:
    return Delivery(
        queue=queue,
        body=stored.body,
        message_id=stored.message_id,
        redelivered=stored.attempt > 1,
        attempt=stored.attempt,
        headers=stored.headers,
    )
