"""Tracing (OpenTelemetry) of a chat turn across every hop, off and free unless configured.

Nothing here imports OpenTelemetry until the standard `OTEL_*` variables ask for traces
(`tracing_configured`): a process without them runs no wrapper and no check on its hot path.
With them, `start_tracing` installs the SDK's tracer provider with the OTLP exporter, and each
part asks `tracing_for` for its `Tracing` (None when off) at construction time.
"""

from __future__ import annotations

from agentcomm.telemetry.env import tracing_configured
from agentcomm.telemetry.setup import TracingHandle, start_tracing, tracing_for

__all__ = ["TracingHandle", "start_tracing", "tracing_configured", "tracing_for"]
