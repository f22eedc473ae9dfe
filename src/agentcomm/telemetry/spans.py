"""The spans agentcomm records, made cheaply: one `Tracing` per part, created only when on.

Names and attributes follow the OpenTelemetry semantic conventions where one applies
(messaging for the bus, with `messaging.system` `rabbitmq`); the rest are `agentcomm.*`.
Every span here is made with an explicit parent where one is known, so that only the spans
that carry a turn's context onward (a consumed delivery, a frame received, the agent's
handler) become current.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Tracer
from opentelemetry.util.types import Attributes

from agentcomm.telemetry.context import current_traceparent, format_traceparent, parse_traceparent

__all__ = ["Tracing"]

# Kinds by name, so that a caller needs no OpenTelemetry import of its own (a module imported
# whether or not tracing is on names them as strings).
_KINDS: Mapping[str, SpanKind] = MappingProxyType(
    {
        "internal": SpanKind.INTERNAL,
        "server": SpanKind.SERVER,
        "client": SpanKind.CLIENT,
        "producer": SpanKind.PRODUCER,
        "consumer": SpanKind.CONSUMER,
    }
)


class Tracing:
    """One part's tracer with the few operations the hub, the broker and the SDK need."""

    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer

    def start(
        self,
        name: str,
        kind: str = "internal",
        *,
        parent: Context | None = None,
        attributes: Attributes = None,
    ) -> Span:
        """A span under `parent` (a remote context), or under the current span when None."""
        return self.tracer.start_span(
            name, context=parent, kind=_KINDS[kind], attributes=attributes
        )

    @contextmanager
    def current(self, span: Span) -> Iterator[Span]:
        """Makes `span` current for the block (its children and the spans of code it calls
        nest under it) and ends it after, marked as an error when the block raised."""
        with trace.use_span(span, end_on_exit=True):
            yield span

    @staticmethod
    def parent_from(traceparent: object) -> Context | None:
        return parse_traceparent(traceparent)

    @staticmethod
    def traceparent_of(span: Span) -> str:
        return format_traceparent(span.get_span_context())

    @staticmethod
    def current_traceparent() -> str:
        return current_traceparent()

    @staticmethod
    def current_span() -> Span:
        return trace.get_current_span()

    @staticmethod
    def in_trace() -> bool:
        """Whether this task is inside a sampled trace (else nothing is recorded for it)."""
        return trace.get_current_span().is_recording()

    @staticmethod
    @contextmanager
    def continuing(traceparent: object) -> Iterator[None]:
        """Runs the block with the remote parent `traceparent` names as its context (nothing
        changes for a missing or invalid one)."""
        parent = parse_traceparent(traceparent)
        if parent is None:
            yield
            return
        from opentelemetry import context

        token = context.attach(parent)
        try:
            yield
        finally:
            context.detach(token)
