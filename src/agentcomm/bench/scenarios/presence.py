"""presence: how fast agents can register, and how fast every frontend learns of a lost one.

1. Registration rate: `presence_agents` agents call RegisterAgent (up to 50 at once) on a hub
   with no frontends attached; agents/s over the whole batch.
2. Stream loss: with `presence_frontends` frontends listening, an agent with an open
   ReceiveCommands stream loses it (the call is cancelled, as when its process dies); the time
   from the loss until every frontend has the offline delta. The hub runs with STREAM_GRACE=0
   here, so the number is detection plus fan-out; with the default grace the agent is first
   given STREAM_GRACE seconds to reopen its stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from agentcomm.bench.agents import AgentControl
from agentcomm.bench.context import BenchContext, Result, machine
from agentcomm.bench.procs import BenchError, Children, raise_fd_limit
from agentcomm.bench.rawws import RawFrontend, close_frontends, open_frontends
from agentcomm.bench.scenarios.fanout import CHANGE_TIMEOUT, ChangeWatch
from agentcomm.bench.stacks import MemoryHub
from agentcomm.bench.stats import percentile, rate, rounded

REGISTER_CONCURRENCY = 50


async def _register_all(control: AgentControl, count: int) -> float:
    gate = asyncio.Semaphore(REGISTER_CONCURRENCY)

    async def one(index: int) -> None:
        async with gate:
            await control.register(f"reg-{index}")

    started = time.perf_counter()
    await asyncio.gather(*(one(index) for index in range(count)))
    return time.perf_counter() - started


async def run(context: BenchContext) -> Result:
    options = context.options
    raise_fd_limit(65536)
    children = Children(context.log_dir)
    frontends: list[RawFrontend] = []
    controls: list[AgentControl] = []
    losses: list[float] = []
    try:
        async with context.progress.step("starting hub", 3):
            hub = MemoryHub(context.settings, children, broker=False, name="hub", stream_grace=0.0)
            await hub.start(with_agent=False)
        control = AgentControl(hub.grpc_target)
        controls.append(control)
        async with context.progress.step(f"registering {options.presence_agents:,} agents", 3):
            seconds = await _register_all(control, options.presence_agents)
        watch = ChangeWatch(options.presence_frontends)
        async with context.progress.step(
            f"connecting {options.presence_frontends:,} frontends", options.presence_frontends / 500
        ):
            frontends = await open_frontends(
                hub.http_port, options.presence_frontends, watch.on_text
            )
        async with context.progress.step(
            f"{options.presence_losses} stream losses", options.presence_losses * 0.3
        ):
            for index in range(options.presence_losses):
                agent_id = f"lost-{index}"
                # Each agent on its own channel, as each agent is its own process.
                agent = AgentControl(hub.grpc_target)
                controls.append(agent)
                await agent.register(agent_id)
                agent.open_stream(agent_id)
                await agent.wait_stream_open(agent_id)
                await asyncio.sleep(0.1)
                watch.arm(agent_id)
                lost_at = time.perf_counter()
                agent.lose_stream(agent_id)
                try:
                    async with asyncio.timeout(CHANGE_TIMEOUT):
                        await watch.complete.wait()
                except TimeoutError:
                    raise BenchError(
                        f"Only {len(watch.arrivals)} of {watch.expected} frontends heard that "
                        f"{agent_id} lost its stream within {CHANGE_TIMEOUT:.0f} s."
                    ) from None
                losses.append(max(watch.arrivals) - lost_at)
                await agent.close()
    finally:
        for item in controls:
            await item.close()
        with contextlib.suppress(Exception):
            await close_frontends(frontends)
        await children.stop_all()
    ordered = sorted(losses)
    p99 = percentile(ordered, 0.99) * 1000
    return {
        "scenario": "presence",
        "agents": options.presence_agents,
        "registrations_per_s": rounded(rate(options.presence_agents, seconds), 0),
        "frontends": options.presence_frontends,
        "stream_losses": len(losses),
        "stream_grace_s": 0.0,
        "loss_to_every_frontend_p50_ms": rounded(percentile(ordered, 0.5) * 1000),
        "loss_to_every_frontend_p99_ms": rounded(p99),
        "loss_to_every_frontend_max_ms": rounded(ordered[-1] * 1000) if ordered else None,
        "targets": {"presence_change_p99<=50ms": p99 <= 50},
        "machine": machine(),
    }
