"""What a JSON log line says of the trace it was written in: `trace_id`, `span_id` and the
`message_id` being handled.

Read only when OpenTelemetry is already loaded (it is imported when tracing is on), so that a
process without tracing pays one dictionary lookup per log line and imports nothing.
"""

from __future__ import annotations

import sys
from typing import Any

# The attributes of agentcomm's spans that name the message they handle.
_MESSAGE_ID_KEYS = ("agentcomm.message.id", "messaging.message.id")


def trace_fields() -> dict[str, Any]:
    """trace_id, span_id (hex, as trace backends show them) and message_id of the span current
    in this task; empty outside any trace."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return {}
    span = trace.get_current_span()
    context = span.get_span_context()
    if not context.is_valid:
        return {}
    fields: dict[str, Any] = {
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
    }
    attributes = getattr(span, "attributes", None) or {}
    for key in _MESSAGE_ID_KEYS:
        message_id = attributes.get(key)
        if message_id:
            fields["message_id"] = message_id
            break
    return fields
