"""A small OTLP/gRPC trace receiver for tests: what the processes under test export, kept in
memory and read back as plain records.

Built on the OpenTelemetry proto packages (the collector's own service definition), on a gRPC
server in threads of its own so that it answers whatever the test's event loop is doing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan

KINDS = {
    ProtoSpan.SPAN_KIND_INTERNAL: "internal",
    ProtoSpan.SPAN_KIND_SERVER: "server",
    ProtoSpan.SPAN_KIND_CLIENT: "client",
    ProtoSpan.SPAN_KIND_PRODUCER: "producer",
    ProtoSpan.SPAN_KIND_CONSUMER: "consumer",
}


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    kind: str
    trace_id: str
    span_id: str
    # Empty for a root span.
    parent_id: str
    attributes: dict[str, Any] = field(default_factory=dict)
    # The names of its events, in order.
    events: tuple[str, ...] = ()
    start_ns: int = 0
    end_ns: int = 0

    def __str__(self) -> str:
        return f"{self.service}: {self.name} ({self.kind}) {self.span_id} <- {self.parent_id}"


def _value(any_value: Any) -> Any:
    which = any_value.WhichOneof("value")
    return getattr(any_value, which) if which else None


class _Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.lock = threading.Lock()

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        received = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            service = str(resource.get("service.name", ""))
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(
                        ReceivedSpan(
                            service=service,
                            name=span.name,
                            kind=KINDS.get(span.kind, "unspecified"),
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            attributes={a.key: _value(a.value) for a in span.attributes},
                            events=tuple(event.name for event in span.events),
                            start_ns=span.start_time_unix_nano,
                            end_ns=span.end_time_unix_nano,
                        )
                    )
        with self.lock:
            self.spans.extend(received)
        return trace_service_pb2.ExportTraceServiceResponse()


@dataclass
class OtlpReceiver:
    endpoint: str
    _receiver: _Receiver

    @property
    def env(self) -> dict[str, str]:
        """What makes a process export its spans here, soon after they end."""
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.endpoint,
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }

    def spans(self) -> list[ReceivedSpan]:
        with self._receiver.lock:
            return list(self._receiver.spans)

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [span for span in self.spans() if span.trace_id == trace_id]

    def wait_for(
        self,
        condition: Callable[[list[ReceivedSpan]], bool],
        *,
        trace_id: str,
        timeout: float,
        what: str,
    ) -> list[ReceivedSpan]:
        """The spans of `trace_id` once `condition` holds for them; fails after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            spans = self.trace(trace_id)
            if condition(spans):
                return spans
            if time.monotonic() > deadline:
                listing = "\n".join(str(span) for span in spans)
                raise AssertionError(f"Timed out after {timeout} s waiting for {what}:\n{listing}")
            time.sleep(0.05)


@contextmanager
def otlp_receiver() -> Iterator[OtlpReceiver]:
    """A receiver listening on a free port of the loopback address until the block ends."""
    receiver = _Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield OtlpReceiver(f"http://127.0.0.1:{port}", receiver)
    finally:
        server.stop(grace=None)
