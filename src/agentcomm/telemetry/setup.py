"""Starting the OpenTelemetry SDK in a process, and handing each part its `Tracing`.

The SDK is configured by its standard variables: `OTEL_EXPORTER_OTLP_ENDPOINT` (or
`..._TRACES_ENDPOINT`), `OTEL_EXPORTER_OTLP_INSECURE`, `OTEL_SERVICE_NAME`,
`OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` and the batch
processor's `OTEL_BSP_*`. OpenTelemetry is imported only inside these functions, and only when
`tracing_configured()`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agentcomm.telemetry.env import tracing_configured

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from agentcomm.telemetry.spans import Tracing

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TracingHandle:
    """The tracer provider a process started; `shutdown()` exports what is still buffered."""

    provider: TracerProvider

    def shutdown(self) -> None:
        try:
            self.provider.shutdown()
        except Exception:
            log.exception("Exporting the last spans failed")


def start_tracing(service_name: str) -> TracingHandle | None:
    """Installs the SDK's tracer provider for this process (named `service_name` unless
    `OTEL_SERVICE_NAME` says otherwise) with a batching OTLP exporter; None, and nothing
    imported, when the `OTEL_*` variables do not ask for traces."""
    if not tracing_configured():
        return None
    from opentelemetry import trace
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        # The program set up OpenTelemetry itself (an agent author's own exporter): agentcomm's
        # spans go where its spans go.
        log.info("Tracing on: spans of %s go to the tracer provider already set up", service_name)
        return None

    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service_name}
    provider = TracerProvider(resource=Resource.create(attributes))
    exporter: SpanExporter
    if os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    log.info("Tracing on: spans of %s go to OTLP", service_name)
    return TracingHandle(provider)


def tracing_for(component: str) -> Tracing | None:
    """The `Tracing` a part of agentcomm records its spans with (`component` names the
    instrumentation scope, e.g. "agentcomm.server"); None when tracing is off, so that the
    part leaves its hot path as it is."""
    if not tracing_configured():
        return None
    from opentelemetry import trace

    from agentcomm.telemetry.spans import Tracing

    return Tracing(trace.get_tracer(component))
