"""A hub process on the in-process bus for the benchmarks: the server and, unless told
otherwise, the reference broker (and optionally the echo agent) sharing one InMemoryBus.

`python -m agentcomm.bench.hubproc [--no-broker] [--echo]` with the settings in the environment
(PORT=0 and GRPC_PORT=0 pick free ports). Prints one JSON line with the ports once it serves,
then runs until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence

import orjson

from agentcomm.broker.service import ReferenceBroker
from agentcomm.bus.memory import InMemoryBus
from agentcomm.config import load_settings
from agentcomm.logging_setup import configure_logging
from agentcomm.sdk.agent import Agent
from agentcomm.sdk.demo_agents import build_demo_agent
from agentcomm.server.collector import tune_collector_for_serving
from agentcomm.server.lifecycle.running import RunningServer
from agentcomm.signals import wait_for_stop_signal

log = logging.getLogger(__name__)


async def _serve(broker_wanted: bool, echo_wanted: bool) -> int:
    settings = load_settings(message_bus="memory")
    bus = InMemoryBus()
    server = RunningServer(settings, bus)
    broker: ReferenceBroker | None = None
    agent: Agent | None = None
    await server.start()
    try:
        if broker_wanted:
            broker = ReferenceBroker(
                bus,
                f"127.0.0.1:{server.grpc_port}",
                broker_name="bench-broker",
                prefetch=settings.rabbitmq_prefetch,
            )
            await broker.start()
        if echo_wanted:
            agent = build_demo_agent(
                "echo",
                settings.model_copy(update={"grpc_port": server.grpc_port}),
                agent_id="echo",
                transport="amqp",
                bus=bus,
            )
            await agent.start()
        tune_collector_for_serving()  # as agentcomm serve does once it has started
        print(
            orjson.dumps(
                {
                    "http_port": server.http_port,
                    "grpc_port": server.grpc_port,
                    "pid": os.getpid(),
                }
            ).decode(),
            flush=True,
        )
        await wait_for_stop_signal()
    finally:
        if agent is not None:
            await agent.stop()
        if broker is not None:
            await broker.stop()
        await server.stop()
    return 0


def _log_slow_collections(threshold_s: float = 0.05) -> None:
    """Logs every garbage collection that stops the process for longer than `threshold_s`
    (AGENTCOMM_BENCH_GC_LOG=1): with thousands of sockets a full collection is a pause that
    every frontend feels."""
    started: dict[str, float] = {}

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started["at"] = time.perf_counter()
            return
        took = time.perf_counter() - started.pop("at", time.perf_counter())
        if took >= threshold_s:
            log.warning(
                "gc generation %d took %.0f ms (%d collected)",
                info.get("generation", -1),
                took * 1000,
                info.get("collected", 0),
            )

    gc.callbacks.append(on_gc)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agentcomm.bench.hubproc")
    parser.add_argument("--no-broker", action="store_true", help="serve without a broker")
    parser.add_argument("--echo", action="store_true", help="the echo agent in this process")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    configure_logging(load_settings(message_bus="memory"))
    if os.environ.get("AGENTCOMM_BENCH_GC_LOG"):
        _log_slow_collections()
    with asyncio.Runner(loop_factory=_uvloop_if_installed()) as runner:
        return runner.run(_serve(not args.no_broker, args.echo))


def _uvloop_if_installed() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop `agentcomm serve` runs on (uvloop when installed), so that the hub measured
    here is the one that is deployed."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


if __name__ == "__main__":
    raise SystemExit(main())
