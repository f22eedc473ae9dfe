"""roundtrip and roundtrip-memory: a chat turn frontend → hub → echo agent → frontend.

Closed loop at saturation (`in_flight` frontends, each sending its next message when the last
was answered), closed loop with one message in flight (latency), and an open-loop sweep of
fixed offered rates. On RabbitMQ the floor — the same five hops by a bare aio-pika relay chain —
is measured in the same run with the same load, message size, confirms and prefetch.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass, field
from typing import Any

from agentcomm.bench.context import BenchContext, Result, machine
from agentcomm.bench.floor import HOPS, new_run_id
from agentcomm.bench.frontends import Frontends
from agentcomm.bench.loadgen import Measurement, Target, closed_loop, open_loop
from agentcomm.bench.messages import mean_bus_size
from agentcomm.bench.procs import BenchError, Children, find_process
from agentcomm.bench.profiling import sampled
from agentcomm.bench.stacks import (
    CpuWindow,
    FloorChain,
    MemoryHub,
    RabbitHub,
    cpu_window,
)
from agentcomm.bench.stats import ratio, rounded
from agentcomm.bench.vhost import bench_vhost

WARMUP_SECONDS = 2.0
READY_TIMEOUT = 30.0


def summary(measurement: Measurement) -> dict[str, Any]:
    latency = measurement.latency
    out: dict[str, Any] = {
        "roundtrips_per_s": rounded(measurement.per_s, 1),
        "p50_ms": rounded(latency.p50_ms),
        "p90_ms": rounded(latency.p90_ms),
        "p99_ms": rounded(latency.p99_ms),
        "p999_ms": rounded(latency.p999_ms),
        "max_ms": rounded(latency.max_ms),
        "completed": measurement.completed,
        "errors": measurement.errors,
    }
    if measurement.offered_per_s is not None:
        out["offered_per_s"] = rounded(measurement.offered_per_s, 1)
    if measurement.in_flight is not None:
        out["in_flight"] = measurement.in_flight
    if measurement.error_samples:
        out["error_samples"] = measurement.error_samples
    return out


def cpu_summary(window: CpuWindow, roundtrips: int) -> dict[str, Any]:
    """CPU per round trip and cores busy, per process and in total (the totals say whether
    the machine, rather than one process, was the limit)."""
    per = window.per_event_ms(roundtrips)
    busy = window.utilisation()
    return {
        "ms_per_roundtrip": {k: rounded(v) for k, v in per.items()},
        "cores_busy": {k: rounded(v, 2) for k, v in busy.items()},
        "total_ms_per_roundtrip": rounded(sum(per.values())),
        "total_cores_busy": rounded(sum(busy.values()), 2),
    }


async def _closed(
    context: BenchContext,
    label: str,
    target: Target,
    processes: dict[str, int],
    in_flight: int,
    seconds: float,
) -> tuple[Measurement, CpuWindow]:
    profile = context.options.profile and in_flight > 1
    folder = context.options.results_dir / "profiles"
    async with (
        context.progress.step(f"{label}: {in_flight} in flight", seconds),
        contextlib.AsyncExitStack() as stack,
    ):
        if profile:
            await stack.enter_async_context(sampled(processes, seconds, folder, label))
        with cpu_window(processes) as window:
            measurement = await closed_loop(target, in_flight, seconds)
    return measurement, window


@dataclass
class Saturation:
    """The closed loop at each in-flight level for one side, and the best of them."""

    best: Measurement
    cpu: CpuWindow
    levels: list[Measurement] = field(default_factory=list)


async def _saturate(
    context: BenchContext,
    sides: dict[str, tuple[Target, dict[str, int]]],
) -> dict[str, Saturation]:
    """Each side at each in-flight level, the sides taking turns at every level (so that the
    machine's drift hits both alike); each side's best level is its saturation."""
    options = context.options
    found: dict[str, Saturation] = {}
    for level in options.levels:
        for name, (target, processes) in sides.items():
            measurement, window = await _closed(
                context, name, target, processes, level, options.level_seconds
            )
            current = found.get(name)
            if current is None:
                found[name] = Saturation(measurement, window, [measurement])
                continue
            current.levels.append(measurement)
            if measurement.per_s > current.best.per_s:
                current.best, current.cpu = measurement, window
    return found


def _levels_table(found: dict[str, Saturation]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name, saturation in found.items():
        for measurement in saturation.levels:
            rows.append({"in_flight": measurement.in_flight, name: summary(measurement)})
    return rows


async def _sweep(
    context: BenchContext,
    targets: dict[str, tuple[Target, float]],
    seconds: float,
) -> list[dict[str, Any]]:
    """Open-loop rates as fractions of each side's own saturation, so that every curve
    reaches its knee; one point per rate and side."""
    points: list[dict[str, Any]] = []
    options = context.options
    for name, (target, saturation) in targets.items():
        rates = options.rates or tuple(saturation * f for f in options.rate_fractions)
        for rate_per_s in rates:
            offered = max(1.0, rate_per_s)
            async with context.progress.step(f"{name}: open loop {offered:.0f}/s", seconds):
                measurement = await open_loop(target, offered, seconds)
            points.append({"offered_per_s": rounded(offered, 1), name: summary(measurement)})
    return points


def _headline(result: Result, hub: Measurement, floor: Measurement | None) -> None:
    latency = hub.latency
    result["in_flight"] = hub.in_flight
    result["roundtrips_per_s"] = rounded(hub.per_s, 1)
    result["p50_ms"] = rounded(latency.p50_ms)
    result["p99_ms"] = rounded(latency.p99_ms)
    result["p999_ms"] = rounded(latency.p999_ms)
    result["errors"] = hub.errors
    if floor is not None:
        result["floor_roundtrips_per_s"] = rounded(floor.per_s, 1)
        result["floor_p50_ms"] = rounded(floor.latency.p50_ms)
        result["floor_p99_ms"] = rounded(floor.latency.p99_ms)
        result["floor_p999_ms"] = rounded(floor.latency.p999_ms)
        result["ratio_to_floor"] = rounded(ratio(hub.per_s, floor.per_s))
    else:
        result["floor_roundtrips_per_s"] = None
        result["ratio_to_floor"] = None


async def _check_reachable(host: str, port: int) -> None:
    """Fails at once, with the address, when nothing listens where RabbitMQ should be."""
    try:
        async with asyncio.timeout(5):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError) as exc:
        raise BenchError(
            f"RabbitMQ at {host}:{port} is not reachable ({exc!r}); check RABBITMQ_HOST and "
            "RABBITMQ_PORT."
        ) from None
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


def _warmup(duration: float) -> float:
    return min(WARMUP_SECONDS, max(0.5, duration / 5))


def _phase_seconds(duration: float) -> tuple[float, float]:
    """(one-in-flight seconds, seconds per open-loop rate)."""
    return max(1.0, duration / 4), max(1.0, duration / 5)


async def run_rabbitmq(context: BenchContext) -> Result:
    options = context.options
    payload = "x" * options.payload_bytes
    body_size = mean_bus_size(payload)
    one_seconds, sweep_seconds = _phase_seconds(options.duration)
    notes: list[str] = []
    result: Result = {
        "scenario": "roundtrip",
        "bus": "rabbitmq",
        "duration_s": options.duration,
        "in_flight": None,
        "in_flight_levels": list(options.levels),
        "frontends": options.sockets,
        "ws_compression": options.ws_compression,
        "hops": HOPS,
        "message_bytes": body_size,
        "prefetch": context.settings.rabbitmq_prefetch,
        "confirms": True,
    }
    await _check_reachable(context.settings.rabbitmq_host, context.settings.rabbitmq_port)
    async with bench_vhost(context.settings, notes) as settings:
        result["vhost"] = settings.rabbitmq_vhost
        children = Children(context.log_dir)
        frontends = Frontends("", payload=payload, compression=options.ws_compression)
        floor = FloorChain(settings, children, body_size, new_run_id())
        try:
            async with context.progress.step("starting server, broker, agent, floor", 8):
                hub = RabbitHub(settings, children)
                await hub.start()
                await floor.start()
                frontends.ws_url = hub.ws_url
                await frontends.open(options.sockets)
                await frontends.wait_until_answering(READY_TIMEOUT)
            me = {"loadgen": os.getpid()}
            rabbitmq = find_process("beam.smp", without="escript")
            if rabbitmq is not None:
                # All of RabbitMQ, whoever else uses it: read with the load average in mind.
                me["rabbitmq"] = rabbitmq
            hub_processes = {**hub.processes, **me}
            floor_processes = {**floor.processes, **me}
            warmup = _warmup(options.duration)
            async with context.progress.step("warming up", 2 * warmup):
                await closed_loop(floor.origin, options.levels[-1], warmup)
                await closed_loop(frontends, options.levels[-1], warmup)
            found = await _saturate(
                context,
                {"floor": (floor.origin, floor_processes), "hub": (frontends, hub_processes)},
            )
            hub_sat, floor_sat = found["hub"].best, found["floor"].best
            _headline(result, hub_sat, floor_sat)
            result["floor_in_flight"] = floor_sat.in_flight
            result["closed_loop"] = _levels_table(found)
            if options.serial_floor:
                serial = FloorChain(settings, children, body_size, new_run_id(), serial=True)
                try:
                    await serial.start()
                    serial_processes = {**serial.processes, **me}
                    await closed_loop(serial.origin, options.levels[-1], warmup)
                    serial_found = await _saturate(
                        context, {"floor-serial": (serial.origin, serial_processes)}
                    )
                finally:
                    await serial.close()
                serial_best = serial_found["floor-serial"]
                result["floor_serial_roundtrips_per_s"] = rounded(serial_best.best.per_s, 1)
                result["floor_serial"] = {
                    "saturation": summary(serial_best.best),
                    "cpu": cpu_summary(serial_best.cpu, serial_best.best.completed),
                    "closed_loop": _levels_table(serial_found),
                }
            floor_one, _ = await _closed(
                context, "floor", floor.origin, floor_processes, 1, one_seconds
            )
            hub_one, _ = await _closed(context, "hub", frontends, hub_processes, 1, one_seconds)
            result["one_in_flight"] = {"hub": summary(hub_one), "floor": summary(floor_one)}
            result["saturation"] = {"hub": summary(hub_sat), "floor": summary(floor_sat)}
            result["cpu"] = {
                "hub": cpu_summary(found["hub"].cpu, hub_sat.completed),
                "floor": cpu_summary(found["floor"].cpu, floor_sat.completed),
            }
            if options.rate_fractions or options.rates:
                result["open_loop"] = await _sweep(
                    context,
                    {"hub": (frontends, hub_sat.per_s), "floor": (floor.origin, floor_sat.per_s)},
                    sweep_seconds,
                )
        finally:
            with contextlib.suppress(Exception):
                await frontends.close()
            await floor.close()
            await children.stop_all()
    result["targets"] = _targets(result)
    result["machine"] = machine()
    if notes:
        result["notes"] = notes
    return result


async def run_memory(context: BenchContext) -> Result:
    options = context.options
    payload = "x" * options.payload_bytes
    one_seconds, sweep_seconds = _phase_seconds(options.duration)
    result: Result = {
        "scenario": "roundtrip-memory",
        "bus": "memory",
        "agent": "separate process over gRPC",
        "duration_s": options.duration,
        "in_flight": None,
        "in_flight_levels": list(options.levels),
        "frontends": options.sockets,
        "ws_compression": options.ws_compression,
    }
    children = Children(context.log_dir)
    frontends = Frontends("", payload=payload, compression=options.ws_compression)
    try:
        async with context.progress.step("starting hub and agent", 5):
            hub = MemoryHub(context.settings, children)
            await hub.start()
            frontends.ws_url = hub.ws_url
            await frontends.open(options.sockets)
            await frontends.wait_until_answering(READY_TIMEOUT)
        processes = {**hub.processes, "loadgen": os.getpid()}
        warmup = _warmup(options.duration)
        async with context.progress.step("warming up", warmup):
            await closed_loop(frontends, options.levels[-1], warmup)
        found = await _saturate(context, {"hub": (frontends, processes)})
        hub_sat, hub_cpu = found["hub"].best, found["hub"].cpu
        _headline(result, hub_sat, None)
        result["closed_loop"] = _levels_table(found)
        hub_one, _ = await _closed(context, "hub", frontends, processes, 1, one_seconds)
        result["one_in_flight"] = {"hub": summary(hub_one)}
        result["saturation"] = {"hub": summary(hub_sat)}
        result["cpu"] = {"hub": cpu_summary(hub_cpu, hub_sat.completed)}
        if options.rate_fractions or options.rates:
            result["open_loop"] = await _sweep(
                context, {"hub": (frontends, hub_sat.per_s)}, sweep_seconds
            )
    finally:
        with contextlib.suppress(Exception):
            await frontends.close()
        await children.stop_all()
    if options.memory_agent_in_process:
        result["agent_in_process"] = await _memory_in_process(
            context, payload, one_seconds, hub_sat.in_flight or options.levels[-1]
        )
    result["targets"] = _targets(result)
    result["machine"] = machine()
    return result


async def _memory_in_process(
    context: BenchContext, payload: str, one_seconds: float, in_flight: int
) -> Result:
    """The same hub with the echo agent on its in-process bus: the hub's cost without the
    agent's gRPC link (a diagnostic beside the main number)."""
    options = context.options
    children = Children(context.log_dir)
    frontends = Frontends("", payload=payload, compression=options.ws_compression)
    try:
        async with context.progress.step("starting hub with the agent inside", 5):
            hub = MemoryHub(context.settings, children, echo_in_process=True)
            await hub.start()
            frontends.ws_url = hub.ws_url
            await frontends.open(options.sockets)
            await frontends.wait_until_answering(READY_TIMEOUT)
        processes = {**hub.processes, "loadgen": os.getpid()}
        await closed_loop(frontends, in_flight, _warmup(options.duration))
        sat, cpu = await _closed(
            context, "hub+agent", frontends, processes, in_flight, options.level_seconds
        )
        one, _ = await _closed(context, "hub+agent", frontends, processes, 1, one_seconds)
    finally:
        with contextlib.suppress(Exception):
            await frontends.close()
        await children.stop_all()
    return {
        "roundtrips_per_s": rounded(sat.per_s, 1),
        "in_flight": in_flight,
        "saturation": summary(sat),
        "one_in_flight": summary(one),
        "cpu": cpu_summary(cpu, sat.completed),
    }


def _targets(result: Result) -> dict[str, Any]:
    """The issue's targets, reported beside the numbers (never asserted)."""
    targets: dict[str, Any] = {}
    rt = result.get("roundtrips_per_s")
    if result.get("bus") == "rabbitmq":
        r = result.get("ratio_to_floor")
        targets["ratio_to_floor>=1.0"] = None if r is None else r >= 1.0
        targets["roundtrips_per_s>=800"] = None if rt is None else rt >= 800
    one = result.get("one_in_flight", {}).get("hub", {})
    p50, p99 = one.get("p50_ms"), one.get("p99_ms")
    targets["one_in_flight_p50<=5ms"] = None if p50 is None else p50 <= 5
    targets["one_in_flight_p99<=10ms"] = None if p99 is None else p99 <= 10
    return targets
