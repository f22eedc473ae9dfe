"""One hub's handle on a bus that several hubs of one test process share, as hub processes
share one RabbitMQ: closing a handle stops what that hub started there, and nothing else."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from agentcomm.bus.base import Bus, MessageHandler, QueueOptions, Subscription


class BusShare:
    def __init__(self, bus: Bus) -> None:
        self._bus = bus
        self._started: list[Subscription] = []
        self._open = True

    @property
    def inner(self) -> Bus:
        """The shared bus (what the SDK looks at to tell an in-process bus)."""
        return self._bus

    @property
    def is_connected(self) -> bool:
        return self._open and self._bus.is_connected

    async def connect(self) -> None:
        await self._bus.connect()

    async def declare_queue(self, name: str, options: QueueOptions | None = None) -> None:
        await self._bus.declare_queue(name, options)

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
        await self._bus.publish(
            queue,
            body,
            message_id=message_id,
            mandatory=mandatory,
            timeout=timeout,
            headers=headers,
            persistent=persistent,
        )

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
        subscription = await self._bus.consume(
            queue,
            handler,
            prefetch=prefetch,
            concurrency=concurrency,
            max_deliveries=max_deliveries,
            on_dead_letter=on_dead_letter,
        )
        self._started.append(subscription)
        return subscription

    async def broadcast(
        self, topic: str, body: bytes, *, message_id: str | None = None, timeout: float = 5.0
    ) -> None:
        await self._bus.broadcast(topic, body, message_id=message_id, timeout=timeout)

    async def listen(
        self, topic: str, handler: MessageHandler, *, prefetch: int | None = None
    ) -> Subscription:
        subscription = await self._bus.listen(topic, handler, prefetch=prefetch)
        self._started.append(subscription)
        return subscription

    def on_reconnect(self, callback: Callable[[], None]) -> None:
        self._bus.on_reconnect(callback)

    async def delete_queue(self, name: str) -> None:
        await self._bus.delete_queue(name)

    async def close(self) -> None:
        self._open = False
        started, self._started = self._started, []
        for subscription in started:
            await subscription.cancel()
