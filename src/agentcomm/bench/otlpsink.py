"""A trace sink for `roundtrip-traced`: takes OTLP/gRPC exports and throws them away.

It answers every Export at once without decoding it, so that what the benchmark measures is
what tracing costs the hub's processes (making, batching, encoding and sending spans), not
what a collector does with them; a collector runs on a machine of its own in production.
Run as `python -m agentcomm.bench.otlpsink PORT`; it listens on 127.0.0.1:PORT until SIGTERM.
"""

from __future__ import annotations

import signal
import sys
import threading
from concurrent import futures

import grpc

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def _take(request: bytes, context: grpc.ServicerContext) -> bytes:
    # An empty ExportTraceServiceResponse is zero bytes: everything was accepted.
    return b""


class _Sink(grpc.GenericRpcHandler):
    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[bytes, bytes] | None:
        if handler_call_details.method != EXPORT:
            return None
        return grpc.unary_unary_rpc_method_handler(_take)


def main(argv: list[str]) -> int:
    port = int(argv[0])
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((_Sink(),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    stopped.wait()
    server.stop(grace=None)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
