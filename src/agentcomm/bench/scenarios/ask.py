"""ask: a frontend's question answered by an agent that asks a second agent (two levels:
frontend → hub → relay → hub → echo and back), against the one-level round trip
(frontend → hub → echo) measured in the same run, on the same hub, at the same load.

Both on the in-process bus with the agents as separate processes over gRPC, as
`roundtrip-memory`. The two sides take turns at every in-flight level, so that the machine's
drift hits both alike; each side's best level is its saturation. The goal (never asserted):
two levels at ≥ 0.45 of one level's round trips per second, the hops being doubled.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from agentcomm.bench.context import BenchContext, Result, machine
from agentcomm.bench.frontends import Frontends
from agentcomm.bench.loadgen import Measurement, Target, closed_loop
from agentcomm.bench.procs import Children
from agentcomm.bench.relayproc import ASKED_ID, RELAY_ID
from agentcomm.bench.scenarios.roundtrip import cpu_summary, summary
from agentcomm.bench.stacks import (
    START_TIMEOUT,
    CpuWindow,
    MemoryHub,
    _child_settings,
    _wait_agent_online,
    cpu_window,
)
from agentcomm.bench.stats import ratio, rounded

READY_TIMEOUT = 30.0
GOAL = 0.45
SIDES = ("one level", "two levels")


async def run(context: BenchContext) -> Result:
    options = context.options
    payload = "x" * options.payload_bytes
    result: Result = {
        "scenario": "ask",
        "bus": "memory",
        "agents": "separate processes over gRPC: echo, and relay (asks echo)",
        "duration_s": options.duration,
        "in_flight_levels": list(options.levels),
        "frontends": options.sockets,
    }
    children = Children(context.log_dir)
    sides = {
        name: Frontends(
            "", payload=payload, receiver_id=receiver, compression=options.ws_compression
        )
        for name, receiver in zip(SIDES, (ASKED_ID, RELAY_ID), strict=True)
    }
    try:
        async with context.progress.step("starting hub and agents", 5):
            hub = MemoryHub(context.settings, children)
            await hub.start()
            env = _child_settings(context.settings, message_bus="memory")
            env["GRPC_PORT"] = str(hub.grpc_port)
            relay = await children.start_module("relay", "agentcomm.bench.relayproc", [], env)
            await _wait_agent_online(hub.http_port, RELAY_ID, relay, START_TIMEOUT)
            for frontends in sides.values():
                frontends.ws_url = hub.ws_url
                await frontends.open(options.sockets)
                await frontends.wait_until_answering(READY_TIMEOUT)
        processes = {**hub.processes, "relay": relay.pid, "loadgen": os.getpid()}
        warmup = max(1.0, min(2.0, options.duration / 5))
        async with context.progress.step("warming up", warmup):
            for frontends in sides.values():
                await closed_loop(frontends, options.levels[-1], warmup / 2)
        best: dict[str, tuple[Measurement, CpuWindow]] = {}
        levels: list[dict[str, Any]] = []
        for level in options.levels:
            row: dict[str, Any] = {"in_flight": level}
            levels.append(row)
            for name, frontends in sides.items():
                measured = await _closed(context, name, frontends, processes, level)
                row[name] = summary(measured[0])["roundtrips_per_s"]
                if name not in best or measured[0].per_s > best[name][0].per_s:
                    best[name] = measured
        one = {
            name: (await _closed(context, name, f, processes, 1))[0] for name, f in sides.items()
        }
    finally:
        for frontends in sides.values():
            with contextlib.suppress(Exception):
                await frontends.close()
        await children.stop_all()
    single, double = (best[name][0] for name in SIDES)
    share = ratio(double.per_s, single.per_s)
    result["roundtrips_per_s"] = rounded(double.per_s, 1)
    result["one_level_roundtrips_per_s"] = rounded(single.per_s, 1)
    result["ratio_to_one_level"] = rounded(share, 3)
    result["saturation"] = {name: summary(best[name][0]) for name in SIDES}
    result["one_in_flight"] = {name: summary(one[name]) for name in SIDES}
    result["closed_loop"] = levels
    result["cpu"] = {name: cpu_summary(best[name][1], best[name][0].completed) for name in SIDES}
    result["targets"] = {f"ratio_to_one_level>={GOAL}": None if share is None else share >= GOAL}
    result["machine"] = machine()
    return result


async def _closed(
    context: BenchContext, name: str, target: Target, processes: dict[str, int], level: int
) -> tuple[Measurement, CpuWindow]:
    seconds = context.options.level_seconds if level > 1 else max(1.0, context.options.duration / 4)
    async with context.progress.step(f"{name}: {level} in flight", seconds):
        with cpu_window(processes) as window:
            measurement = await closed_loop(target, level, seconds)
    return measurement, window
