"""stream: streamed answers (REPLY_CHUNKs) from an SDK agent to frontends, on both buses.

1. Closed loop at saturation: `stream_frontends` frontends each ask the streamer agent
   (`bench/streamer.py`, its own process) for an answer of `stream_tokens` tokens produced as
   fast as it can, and ask again once the final REPLY came. Reported: tokens/s and chunk
   frames/s delivered, time to first token, the gap between chunk frames.
2. Realistic load: answers of `stream_paced_tokens` tokens at `stream_rate` tokens/s, N at
   once (their starts spread over a second), N doubled and then bisected while the p99 delay
   the hub added to the tokens (each token's arrival against its schedule, anchored on the
   answer's first token) stays within `stream_bound_ms` and no answer fails. Reported: the
   largest N that held, per bus — concurrent LLM streams per hub.
3. On RabbitMQ, the floor in the same run: the same tokens (one persistent, confirmed message
   each, sent one after the other per answer as the SDK sends chunks) over the same two hops
   with a bare aio-pika relay (`streamload.FloorStreams`), under the same closed loop.

The in-process bus runs the hub (server and broker) in one process and the agent in another
over gRPC, as `roundtrip-memory` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from agentcomm.bench.context import BenchContext, Result, machine
from agentcomm.bench.floor import new_run_id
from agentcomm.bench.messages import chunk_bus_size
from agentcomm.bench.procs import Children, find_process
from agentcomm.bench.scenarios.roundtrip import _check_reachable
from agentcomm.bench.stacks import MemoryHub, RabbitHub, _child_settings, cpu_window
from agentcomm.bench.stats import ratio, rounded
from agentcomm.bench.streamer import STREAMER_ID
from agentcomm.bench.streamload import FloorStreams, StreamFrontends
from agentcomm.bench.streamsteps import Ask, Window, paced_step, saturate, saturation_summary
from agentcomm.bench.vhost import bench_vhost

READY_TIMEOUT = 30.0
STREAMER_MODULE = "agentcomm.bench.streamer"


async def search(
    context: BenchContext, label: str, ask: Ask, ensure_slots: Callable[[int], Awaitable[None]]
) -> dict[str, Any]:
    """The largest number of paced answers at once that held the bound: doubling, then
    bisecting, within `stream_search_seconds`."""
    options = context.options
    bound = options.stream_bound_ms
    tokens, per_s = options.stream_paced_tokens, options.stream_rate
    deadline = time.monotonic() + options.stream_search_seconds
    steps: list[dict[str, Any]] = []

    async def step(n: int) -> bool:
        await ensure_slots(n)
        # A step that fails is measured once more: on a shared machine one stall of someone
        # else's work can cost a step its p99, and the limit sought is the hub's.
        for attempt in (1, 2):
            title = f"{label}: {n} streams at {per_s:g}/s" + (" (again)" if attempt > 1 else "")
            async with context.progress.step(title, tokens / per_s):
                point = await paced_step(ask, n, tokens, per_s)
            p99 = point["added_delay_p99_ms"]
            point["held"] = bool(
                not point["errors"]
                and not point["out_of_order"]
                and p99 is not None
                and p99 <= bound
            )
            point["attempt"] = attempt
            steps.append(point)
            await asyncio.sleep(0.5)  # let what is left of the step drain
            if point["held"]:
                return True
        return False

    best, failed = 0, 0
    n = max(1, options.stream_start)
    while n <= options.stream_max and time.monotonic() < deadline:
        if not await step(n):
            failed = n
            break
        best, n = n, n * 2
    low, high = best, failed
    while high and high - low > max(1, low // 10) and time.monotonic() < deadline:
        middle = (low + high) // 2
        if await step(middle):
            low = middle
        else:
            high = middle
    return {
        "concurrent_streams": low,
        "first_failed": high or None,
        "bound_reached": high == 0,
        "steps": steps,
    }


async def _cpu_of(
    processes: dict[str, int], run: Callable[[], Awaitable[Window]]
) -> tuple[Window, dict[str, Any]]:
    with cpu_window(processes) as cpu:
        window = await run()
    tokens = sum(count for _, count in window.arrivals())
    per = cpu.per_event_ms(tokens)
    return window, {
        "us_per_token": {k: rounded(v * 1000, 1) for k, v in per.items()},
        "cores_busy": {k: rounded(v, 2) for k, v in cpu.utilisation().items()},
    }


async def _hub_side(
    context: BenchContext, label: str, frontends: StreamFrontends, processes: dict[str, int]
) -> dict[str, Any]:
    options = context.options
    wanted = max(options.stream_frontends, options.stream_sockets)
    await frontends.open(max(0, wanted - frontends.slots))
    await frontends.wait_until_answering(READY_TIMEOUT)
    warmup = min(2.0, max(0.5, options.duration / 5))
    async with context.progress.step(f"{label}: saturation", options.duration + warmup):
        window, cpu = await _cpu_of(
            processes,
            lambda: saturate(
                frontends.ask,
                options.stream_frontends,
                options.stream_tokens,
                options.duration,
                warmup,
                sockets=frontends.slots,
            ),
        )

    async def ensure(n: int) -> None:
        if frontends.slots < n:
            await frontends.open(n - frontends.slots)

    paced = await search(context, label, frontends.ask, ensure)
    return {"saturation": saturation_summary(window), "cpu": cpu, "paced": paced}


async def _rabbitmq(context: BenchContext, notes: list[str]) -> dict[str, Any]:
    settings0 = context.settings
    await _check_reachable(settings0.rabbitmq_host, settings0.rabbitmq_port)
    out: dict[str, Any] = {}
    async with bench_vhost(settings0, notes) as settings:
        children = Children(context.log_dir)
        frontends: StreamFrontends | None = None
        run_id = new_run_id()
        queues = [f"bench_stream_floor_{run_id}_{i}" for i in (1, 2)]
        floor = FloorStreams(
            settings.rabbitmq_url, queues, chunk_bus_size(), settings.rabbitmq_prefetch
        )
        try:
            async with context.progress.step("starting server, broker, streamer, floor", 8):
                hub = RabbitHub(
                    settings,
                    children,
                    agent_module=STREAMER_MODULE,
                    agent_id=STREAMER_ID,
                    agent_args=_streamer_args(context),
                )
                await hub.start()
                await floor.start()
                env = _child_settings(settings)
                env["FLOOR_AMQP_URL"] = settings.rabbitmq_url
                relay = await children.start_module(
                    "floor-broker",
                    "agentcomm.bench.floor",
                    [str(settings.rabbitmq_prefetch), f"{queues[0]}>{queues[1]}"],
                    env,
                )
                await relay.wait_for_json("ready", READY_TIMEOUT)
                frontends = StreamFrontends(hub.http_port, STREAMER_ID)
            me = {"loadgen": os.getpid()}
            rabbitmq = find_process("beam.smp", without="escript")
            if rabbitmq is not None:
                me["rabbitmq"] = rabbitmq
            options = context.options
            warmup = min(2.0, max(0.5, options.duration / 5))
            async with context.progress.step("floor: saturation", options.duration + warmup):
                floor_window, floor_cpu = await _cpu_of(
                    {"floor-broker": relay.pid, **me},
                    lambda: saturate(
                        floor.ask,
                        options.stream_frontends,
                        options.stream_tokens,
                        options.duration,
                        warmup,
                    ),
                )
            out["floor"] = {"saturation": saturation_summary(floor_window), "cpu": floor_cpu}
            out["hub"] = await _hub_side(context, "rabbitmq", frontends, {**hub.processes, **me})
        finally:
            if frontends is not None:
                with contextlib.suppress(Exception):
                    await frontends.close()
            with contextlib.suppress(Exception):
                await floor.close()
            await children.stop_all()
    return out


def _streamer_args(context: BenchContext) -> list[str]:
    merge = context.options.stream_merge_ms
    return [] if merge < 0 else ["--merge-ms", str(merge)]


async def _memory(context: BenchContext) -> dict[str, Any]:
    children = Children(context.log_dir)
    frontends: StreamFrontends | None = None
    try:
        async with context.progress.step("starting hub and streamer", 5):
            hub = MemoryHub(
                context.settings,
                children,
                agent_module=STREAMER_MODULE,
                agent_id=STREAMER_ID,
                agent_args=_streamer_args(context),
            )
            await hub.start()
            frontends = StreamFrontends(hub.http_port, STREAMER_ID)
        processes = {**hub.processes, "loadgen": os.getpid()}
        return await _hub_side(context, "memory", frontends, processes)
    finally:
        if frontends is not None:
            with contextlib.suppress(Exception):
                await frontends.close()
        await children.stop_all()


def _rows(sides: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for name, side in sides.items():
        s = side.get("saturation", {})
        paced = side.get("paced", {})
        rows.append(
            {
                "side": name,
                "tokens/s": s.get("tokens_per_s"),
                "frames/s": s.get("frames_per_s"),
                "first token p50 ms": s.get("first_token_p50_ms"),
                "gap p50 ms": s.get("gap_p50_ms"),
                "gap p99 ms": s.get("gap_p99_ms"),
                "streams held": paced.get("concurrent_streams"),
                "errors": s.get("errors"),
            }
        )
    return rows


async def run(context: BenchContext) -> Result:
    options = context.options
    notes: list[str] = []
    result: Result = {
        "scenario": "stream",
        "duration_s": options.duration,
        "frontends": options.stream_frontends,
        "tokens_per_answer": options.stream_tokens,
        "paced_tokens_per_answer": options.stream_paced_tokens,
        "paced_rate_per_s": options.stream_rate,
        "bound_ms": options.stream_bound_ms,
        "chunk_bytes": chunk_bus_size(),
        "stream_merge_ms": options.stream_merge_ms if options.stream_merge_ms >= 0 else None,
    }
    sides: dict[str, dict[str, Any]] = {}
    if options.stream_rabbitmq:
        rabbit = await _rabbitmq(context, notes)
        result["rabbitmq"] = rabbit
        sides["hub on RabbitMQ"] = rabbit["hub"]
        sides["floor: bare aio-pika, same 2 hops"] = rabbit["floor"]
        hub_s, floor_s = rabbit["hub"]["saturation"], rabbit["floor"]["saturation"]
        result["tokens_per_s"] = hub_s["tokens_per_s"]
        result["floor_tokens_per_s"] = floor_s["tokens_per_s"]
        result["ratio_to_floor"] = rounded(ratio(hub_s["tokens_per_s"], floor_s["tokens_per_s"]))
        result["first_token_p50_ms"] = hub_s["first_token_p50_ms"]
        # At low load: the first step of the paced search (its fewest streams).
        steps = rabbit["hub"]["paced"]["steps"]
        result["low_load_first_token_p50_ms"] = steps[0]["first_token_p50_ms"] if steps else None
        result["concurrent_streams"] = rabbit["hub"]["paced"]["concurrent_streams"]
        result["targets"] = {
            "concurrent_streams>=1000": (result["concurrent_streams"] or 0) >= 1000,
            "low_load_first_token_p50<=10ms": (result["low_load_first_token_p50_ms"] or 1e9) <= 10,
        }
    if options.stream_memory:
        memory = await _memory(context)
        result["memory"] = memory
        sides["hub on the in-process bus"] = memory
        result["memory_tokens_per_s"] = memory["saturation"]["tokens_per_s"]
        result["memory_first_token_p50_ms"] = memory["saturation"]["first_token_p50_ms"]
        result["memory_concurrent_streams"] = memory["paced"]["concurrent_streams"]
        if "tokens_per_s" in result:
            result["memory_ratio_to_rabbitmq"] = rounded(
                ratio(memory["saturation"]["tokens_per_s"], result["tokens_per_s"])
            )
    result["rows"] = _rows(sides)
    result["machine"] = machine()
    if notes:
        result["notes"] = notes
    return result
