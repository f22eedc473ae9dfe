"""cluster: what it costs to be several hubs on one RabbitMQ.

Three `agentcomm serve` processes on one vhost (hub a with a broker and the echo agent, hubs b
and c alone), each its own process, as in production.

1. Round trips, cross-hub against same-hub in the same run: frontends on hub a and frontends
   on hub b chat with the echo agent registered on hub a, the two sides taking turns at every
   in-flight level (so that the machine's drift hits both alike). A cross-hub turn adds one
   hop: its answer is forwarded from hub a's routing to hub b's queue. Goal: cross-hub at
   least 0.85 of same-hub.
2. Presence across hubs: `presence_frontends` frontends spread over the three hubs; an agent
   registers and unregisters on hub a `fanout_changes` times, and each change's arrival at
   every frontend on hubs b and c is timed (the hop through the bus's `presence` broadcast).
   Goal: p99 at most 100 ms.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from agentcomm.bench.agents import AgentControl
from agentcomm.bench.context import BenchContext, Result, machine
from agentcomm.bench.frontends import Frontends
from agentcomm.bench.loadgen import closed_loop
from agentcomm.bench.messages import mean_bus_size
from agentcomm.bench.procs import Children, free_port, raise_fd_limit, wait_http_ok
from agentcomm.bench.rawws import RawFrontend, close_frontends, open_frontends
from agentcomm.bench.scenarios.fanout import ChangeWatch, measure_changes
from agentcomm.bench.scenarios.roundtrip import (
    READY_TIMEOUT,
    _check_reachable,
    _closed,
    _levels_table,
    _saturate,
    _warmup,
    summary,
)
from agentcomm.bench.stacks import START_TIMEOUT, RabbitHub, _child_settings
from agentcomm.bench.stats import ratio, rounded
from agentcomm.bench.vhost import bench_vhost
from agentcomm.config import Settings

RATIO_GOAL = 0.85
PRESENCE_P99_GOAL_MS = 100.0


class PlainHub:
    """One more `agentcomm serve` on the same vhost, with nothing beside it."""

    def __init__(self, settings: Settings, children: Children, name: str) -> None:
        self.settings = settings
        self.children = children
        self.name = name
        self.http_port = free_port()
        self.grpc_port = free_port()
        self.pid = 0

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.http_port}/ws"

    async def start(self) -> None:
        env = _child_settings(
            self.settings, message_bus="rabbitmq", port=self.http_port, grpc_port=self.grpc_port
        )
        child = await self.children.start_agentcomm(f"{self.name}-server", ["serve"], env)
        await wait_http_ok(self.http_port, "/readyz", START_TIMEOUT, child)
        self.pid = child.pid


async def _round_trips(
    context: BenchContext, same: Frontends, cross: Frontends, processes: dict[str, int]
) -> dict[str, Any]:
    options = context.options
    warmup = _warmup(options.duration)
    async with context.progress.step("warming up", 2 * warmup):
        await closed_loop(same, options.levels[-1], warmup)
        await closed_loop(cross, options.levels[-1], warmup)
    found = await _saturate(
        context, {"same-hub": (same, processes), "cross-hub": (cross, processes)}
    )
    same_best, cross_best = found["same-hub"].best, found["cross-hub"].best
    one_seconds = max(1.0, options.duration / 4)
    same_one, _ = await _closed(context, "same-hub", same, processes, 1, one_seconds)
    cross_one, _ = await _closed(context, "cross-hub", cross, processes, 1, one_seconds)
    return {
        "same_hub_roundtrips_per_s": rounded(same_best.per_s, 1),
        "cross_hub_roundtrips_per_s": rounded(cross_best.per_s, 1),
        "cross_to_same_ratio": rounded(ratio(cross_best.per_s, same_best.per_s)),
        "saturation": {"same-hub": summary(same_best), "cross-hub": summary(cross_best)},
        "one_in_flight": {"same-hub": summary(same_one), "cross-hub": summary(cross_one)},
        "closed_loop": _levels_table(found),
    }


async def _presence(
    context: BenchContext, hubs: list[tuple[int, str]], frontends: list[RawFrontend]
) -> dict[str, Any]:
    """`hubs`: (HTTP port, gRPC target) of each hub, the first the one the changes happen on."""
    options = context.options
    total = max(len(hubs), options.presence_frontends)
    counts = [total // len(hubs) + (index < total % len(hubs)) for index in range(len(hubs))]
    others = sum(counts[1:])
    watch = ChangeWatch(others)
    async with context.progress.step(
        f"connecting {total:,} frontends over {len(hubs)} hubs", total / 500
    ):
        for index, ((port, _), count) in enumerate(zip(hubs, counts, strict=True)):
            # Only the frontends on the other hubs are timed: the change crosses the bus.
            callback = watch.on_text if index > 0 else None
            frontends.extend(await open_frontends(port, count, callback))
    control = AgentControl(hubs[0][1])
    try:
        async with context.progress.step(
            f"{options.fanout_changes} presence changes", options.fanout_changes * 0.2
        ):
            measured = await measure_changes(control, watch, options.fanout_changes, "cluster")
    finally:
        await control.close()
    return {"frontends": total, "timed_frontends": others, **measured}


async def run(context: BenchContext) -> Result:
    options = context.options
    raise_fd_limit(65536)
    payload = "x" * options.payload_bytes
    result: Result = {
        "scenario": "cluster",
        "bus": "rabbitmq",
        "hubs": 3,
        "duration_s": options.duration,
        "in_flight_levels": list(options.levels),
        "frontends_per_side": options.sockets,
        "message_bytes": mean_bus_size(payload),
    }
    notes: list[str] = []
    await _check_reachable(context.settings.rabbitmq_host, context.settings.rabbitmq_port)
    async with bench_vhost(context.settings, notes) as settings:
        result["vhost"] = settings.rabbitmq_vhost
        children = Children(context.log_dir)
        same = Frontends("", payload=payload, compression=options.ws_compression)
        cross = Frontends("", payload=payload, compression=options.ws_compression)
        raw: list[RawFrontend] = []
        try:
            async with context.progress.step("starting 3 hubs, broker, agent", 10):
                hub_a = RabbitHub(settings, children, prefix="a-")
                await hub_a.start()
                others = [PlainHub(settings, children, name) for name in ("b", "c")]
                for hub in others:
                    await hub.start()
                same.ws_url, cross.ws_url = hub_a.ws_url, others[0].ws_url
                await same.open(options.sockets, name="same")
                await cross.open(options.sockets, name="cross")
                await same.wait_until_answering(READY_TIMEOUT)
                await cross.wait_until_answering(READY_TIMEOUT)
            processes = {
                **{f"a-{name}": pid for name, pid in hub_a.processes.items()},
                **{f"{hub.name}-server": hub.pid for hub in others},
                "loadgen": os.getpid(),
            }
            result["round_trips"] = await _round_trips(context, same, cross, processes)
            await same.close()
            await cross.close()
            hubs = [(hub_a.http_port, f"127.0.0.1:{hub_a.grpc_port}")] + [
                (hub.http_port, f"127.0.0.1:{hub.grpc_port}") for hub in others
            ]
            result["presence"] = await _presence(context, hubs, raw)
        finally:
            for frontends in (same, cross):
                with contextlib.suppress(Exception):
                    await frontends.close()
            with contextlib.suppress(Exception):
                await close_frontends(raw)
            await children.stop_all()
    round_trips, presence = result["round_trips"], result["presence"]
    result["cross_to_same_ratio"] = round_trips["cross_to_same_ratio"]
    result["presence_each_frontend_p99_ms"] = presence["each_frontend_p99_ms"]
    result["targets"] = {
        f"cross_to_same_ratio>={RATIO_GOAL}": round_trips["cross_to_same_ratio"] >= RATIO_GOAL,
        f"presence_p99<={PRESENCE_P99_GOAL_MS:g}ms": presence["each_frontend_p99_ms"]
        <= PRESENCE_P99_GOAL_MS,
    }
    result["machine"] = machine()
    if notes:
        result["notes"] = notes
    return result
