"""fanout: a presence change delivered to every connected frontend.

N registered frontends listen (the lean client, so that the harness costs less than the hub);
an agent registers or unregisters over gRPC, and each frontend notes when the delta naming that
agent arrived. Reported per size: deliveries/s (frames delivered over the time the fan-out
took), the time until the last frontend knew (p50/p99 over the changes) and the per-frontend
delivery latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from agentcomm.bench.agents import AgentControl
from agentcomm.bench.context import BenchContext, Result, machine
from agentcomm.bench.procs import BenchError, Children, raise_fd_limit
from agentcomm.bench.rawws import RawFrontend, close_frontends, open_frontends
from agentcomm.bench.stacks import MemoryHub
from agentcomm.bench.stats import percentile, rate, rounded, summarize

CHANGE_TIMEOUT = 30.0
WARMUP_CHANGES = 2


class ChangeWatch:
    """Arrival times of the delta naming one agent, one per frontend."""

    def __init__(self, expected: int) -> None:
        self.marker = b""
        self.expected = expected
        self.arrivals: list[float] = []
        self.complete = asyncio.Event()

    def arm(self, agent_id: str) -> None:
        self.marker = f'"{agent_id}"'.encode()
        self.arrivals = []
        self.complete.clear()

    def on_text(self, frontend: RawFrontend, payload: bytes, now: float) -> None:
        if self.marker and self.marker in payload and b'"is_full_update":false' in payload:
            self.arrivals.append(now)
            if len(self.arrivals) >= self.expected:
                self.complete.set()


async def measure_changes(
    control: AgentControl, watch: ChangeWatch, changes: int, prefix: str
) -> dict[str, Any]:
    last_known: list[float] = []
    per_frontend: list[float] = []
    delivered = 0
    busy = 0.0
    # Two changes first that are not counted: the first fan-out to freshly opened sockets
    # pays for one-time allocations on both sides.
    for index in range(-WARMUP_CHANGES, changes):
        agent_id = f"{prefix}-{index // 2}" if index >= 0 else f"{prefix}-warm"
        watch.arm(agent_id)
        started = time.perf_counter()
        if index % 2 == 0:
            await control.register(agent_id)
        else:
            await control.unregister(agent_id)
        try:
            async with asyncio.timeout(CHANGE_TIMEOUT):
                await watch.complete.wait()
        except TimeoutError:
            raise BenchError(
                f"Only {len(watch.arrivals)} of {watch.expected} frontends heard of a presence "
                f"change within {CHANGE_TIMEOUT:.0f} s."
            ) from None
        arrivals = sorted(watch.arrivals)
        if index < 0:
            await asyncio.sleep(0.05)
            continue
        last_known.append(arrivals[-1] - started)
        per_frontend.extend(t - started for t in arrivals)
        delivered += len(arrivals)
        busy += arrivals[-1] - started
        await asyncio.sleep(0.05)
    last = sorted(last_known)
    every = summarize(per_frontend)
    return {
        "changes": changes,
        "deliveries_per_s": rounded(rate(delivered, busy), 0),
        "last_frontend_p50_ms": rounded(percentile(last, 0.5) * 1000),
        "last_frontend_p99_ms": rounded(percentile(last, 0.99) * 1000),
        "last_frontend_max_ms": rounded(last[-1] * 1000),
        "each_frontend_p50_ms": rounded(every.p50_ms),
        "each_frontend_p99_ms": rounded(every.p99_ms),
    }


async def run(context: BenchContext) -> Result:
    options = context.options
    sizes = sorted(options.fanout_sizes)
    limit = raise_fd_limit(65536)
    result: Result = {"scenario": "fanout", "changes_per_size": options.fanout_changes}
    notes: list[str] = []
    usable = [n for n in sizes if n + 200 <= limit]
    if len(usable) < len(sizes):
        notes.append(f"open-file limit {limit}: sizes above {limit - 200} skipped")
    rows: list[dict[str, Any]] = []
    children = Children(context.log_dir)
    frontends: list[RawFrontend] = []
    control: AgentControl | None = None
    try:
        async with context.progress.step("starting hub", 3):
            hub = MemoryHub(context.settings, children, broker=False, name="hub")
            await hub.start(with_agent=False)
        control = AgentControl(hub.grpc_target)
        for size in usable:
            watch = ChangeWatch(size)
            missing = size - len(frontends)
            async with context.progress.step(f"connecting {size:,} frontends", size / 500):
                frontends += await open_frontends(hub.http_port, missing, watch.on_text)
            for frontend in frontends:
                frontend.on_text = watch.on_text
            async with context.progress.step(
                f"{options.fanout_changes} presence changes to {size:,}", options.fanout_changes
            ):
                row = await measure_changes(control, watch, options.fanout_changes, f"fan{size}")
            rows.append({"frontends": size, **row})
    finally:
        if control is not None:
            await control.close()
        with contextlib.suppress(Exception):
            await close_frontends(frontends)
        await children.stop_all()
    result["sizes"] = rows
    biggest = rows[-1] if rows else {}
    result["frontends"] = biggest.get("frontends")
    result["deliveries_per_s"] = biggest.get("deliveries_per_s")
    result["last_frontend_p50_ms"] = biggest.get("last_frontend_p50_ms")
    result["last_frontend_p99_ms"] = biggest.get("last_frontend_p99_ms")
    p99 = biggest.get("last_frontend_p99_ms")
    result["targets"] = {
        "10000_frontends_p99<=250ms": (
            None if p99 is None or biggest.get("frontends") != 10000 else p99 <= 250
        )
    }
    result["machine"] = machine()
    if notes:
        result["notes"] = notes
    return result
