"""A bus that records the messaging spans of each publish and consume of a traced turn.

Installed around the real bus only when tracing is on (`bus/factory.py`), so that a process
without tracing runs the bus as it always did. A publish inside a trace gets a PRODUCER span
and carries its context to the consumer in the `traceparent` header (AMQP headers on
RabbitMQ); a delivery carrying one gets a CONSUMER span, current while its handler runs, so
that what the handler publishes nests under it. Traffic outside any trace (advertisements,
presence broadcasts) passes through untouched: it would only make traces of one span each.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from opentelemetry import context, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from agentcomm.bus.base import (
    Bus,
    Delivery,
    MessageHandler,
    QueueOptions,
    QueueStats,
    Subscription,
)
from agentcomm.telemetry.context import TRACEPARENT, format_traceparent, parse_traceparent
from agentcomm.telemetry.spans import Tracing


class TracedBus:
    """`inner` with spans; every other call goes straight through."""

    def __init__(self, inner: Bus, tracing: Tracing, *, system: str) -> None:
        self.inner = inner
        self._tracer = tracing.tracer
        # `messaging.system`: "rabbitmq", or "agentcomm.memory" for the in-process bus.
        self._system = system

    @property
    def is_connected(self) -> bool:
        return self.inner.is_connected

    async def connect(self) -> None:
        await self.inner.connect()

    async def declare_queue(self, name: str, options: QueueOptions | None = None) -> None:
        await self.inner.declare_queue(name, options)

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
        if not trace.get_current_span().is_recording():
            await self.inner.publish(
                queue,
                body,
                message_id=message_id,
                mandatory=mandatory,
                timeout=timeout,
                headers=headers,
                persistent=persistent,
            )
            return
        span = self._tracer.start_span(
            f"publish {queue}",
            kind=SpanKind.PRODUCER,
            # The conventions' required attributes and the message id, no more: every
            # attribute is encoded and exported with each span (docs/benchmarks.md).
            attributes={
                "messaging.system": self._system,
                "messaging.operation.type": "send",
                "messaging.destination.name": queue,
                "messaging.message.id": message_id or "",
            },
        )
        carried = dict(headers) if headers else {}
        carried[TRACEPARENT] = format_traceparent(span.get_span_context())
        try:
            await self.inner.publish(
                queue,
                body,
                message_id=message_id,
                mandatory=mandatory,
                timeout=timeout,
                headers=carried,
                persistent=persistent,
            )
        except BaseException as exc:
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            span.end()

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
        return await self.inner.consume(
            queue,
            self._traced(queue, handler),
            prefetch=prefetch,
            concurrency=concurrency,
            max_deliveries=max_deliveries,
            on_dead_letter=on_dead_letter,
        )

    def _traced(self, queue: str, handler: MessageHandler) -> MessageHandler:
        tracer, system = self._tracer, self._system
        name = f"process {queue}"

        async def handle(delivery: Delivery) -> None:
            parent = (
                parse_traceparent(delivery.headers.get(TRACEPARENT)) if delivery.headers else None
            )
            if parent is None:
                await handler(delivery)
                return
            span = tracer.start_span(
                name,
                context=parent,
                kind=SpanKind.CONSUMER,
                attributes={
                    "messaging.system": system,
                    "messaging.operation.type": "process",
                    "messaging.destination.name": queue,
                    "messaging.message.id": delivery.message_id or "",
                },
            )
            if delivery.attempt > 1:
                span.set_attribute("agentcomm.delivery.attempt", delivery.attempt)
            token = context.attach(trace.set_span_in_context(span, parent))
            try:
                await handler(delivery)
            except BaseException as exc:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise
            finally:
                context.detach(token)
                span.end()

        return handle

    async def delete_queue(self, name: str) -> None:
        await self.inner.delete_queue(name)

    async def queue_stats(self, name: str) -> QueueStats | None:
        stats = getattr(self.inner, "queue_stats", None)
        return None if stats is None else await stats(name)

    async def broadcast(
        self, topic: str, body: bytes, *, message_id: str | None = None, timeout: float = 5.0
    ) -> None:
        await self.inner.broadcast(topic, body, message_id=message_id, timeout=timeout)

    async def listen(
        self, topic: str, handler: MessageHandler, *, prefetch: int | None = None
    ) -> Subscription:
        return await self.inner.listen(topic, handler, prefetch=prefetch)

    def on_reconnect(self, callback: Callable[[], None]) -> None:
        self.inner.on_reconnect(callback)

    async def close(self) -> None:
        await self.inner.close()


def traced_bus(bus: Bus, tracing: Tracing, *, system: str) -> Bus:
    return TracedBus(bus, tracing, system=system)
