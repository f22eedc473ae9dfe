"""W3C trace context (`traceparent`) written and read by hand: one header, one format.

The propagator API would do the same through a carrier and a getter per call; a chat turn
crosses five hops, so the hub reads and writes the one header itself. Only the version-00 form
is made; a value of any other shape is ignored (a fresh trace starts) rather than refused, as
the W3C recommendation asks.
"""

from __future__ import annotations

import re

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

TRACEPARENT = "traceparent"

_SHAPE = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def format_traceparent(span_context: SpanContext) -> str:
    """The `traceparent` naming `span_context` as the parent of what follows."""
    return (
        f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-"
        f"{span_context.trace_flags & 0xFF:02x}"
    )


def parse_traceparent(value: object) -> Context | None:
    """The remote parent `value` names, or None when it is not a valid `traceparent` (any
    other type, another shape, an all-zero id, or the forbidden version ff)."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str):
        return None
    match = _SHAPE.fullmatch(value.strip()) if len(value) <= 64 else None
    if match is None or match.group(1) == "ff":
        return None
    trace_id, span_id = int(match.group(2), 16), int(match.group(3), 16)
    if not trace_id or not span_id:
        return None
    span_context = SpanContext(
        trace_id,
        span_id,
        is_remote=True,
        trace_flags=TraceFlags(int(match.group(4), 16) & TraceFlags.SAMPLED),
    )
    return trace.set_span_in_context(NonRecordingSpan(span_context))


def current_traceparent() -> str:
    """The `traceparent` of the span current in this task; empty outside any trace."""
    span_context = trace.get_current_span().get_span_context()
    return format_traceparent(span_context) if span_context.is_valid else ""
