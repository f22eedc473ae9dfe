"""Whether the standard OpenTelemetry variables ask this process for traces.

Read without importing OpenTelemetry, so that a process that exports nothing pays nothing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def tracing_configured(environ: Mapping[str, str] | None = None) -> bool:
    """True when traces are to be exported: an OTLP endpoint is set (or `OTEL_TRACES_EXPORTER`
    names an exporter), `OTEL_TRACES_EXPORTER` is not `none`, and `OTEL_SDK_DISABLED` is not
    true. The OpenTelemetry SDK's own defaults would export to localhost:4317 with nothing set;
    here nothing set means off."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    return bool(exporter) or any(env.get(name, "").strip() for name in _ENDPOINTS)
