"""idle: memory the hub holds per idle, registered WebSocket connection.

The hub process's resident memory after a warm-up (a few hundred sockets opened and closed,
so that one-time allocations are not counted), then again with N registered frontends that
send nothing; the difference over N.
"""

from __future__ import annotations

import asyncio
import contextlib

from agentcomm.bench.context import BenchContext, Result, machine
from agentcomm.bench.procs import Children, raise_fd_limit, rss_bytes
from agentcomm.bench.rawws import RawFrontend, close_frontends, open_frontends
from agentcomm.bench.stacks import MemoryHub
from agentcomm.bench.stats import rounded

SETTLE_SECONDS = 2.0
WARMUP_SOCKETS = 500


async def run(context: BenchContext) -> Result:
    count = context.options.idle_connections
    limit = raise_fd_limit(65536)
    notes: list[str] = []
    if count + 200 > limit:
        notes.append(f"open-file limit {limit}: measured {limit - 200} connections, not {count}")
        count = limit - 200
    children = Children(context.log_dir)
    frontends: list[RawFrontend] = []
    try:
        async with context.progress.step("starting hub", 3):
            hub = MemoryHub(context.settings, children, broker=False, name="hub")
            await hub.start(with_agent=False)
        async with context.progress.step("warming up", 3):
            warm = await open_frontends(hub.http_port, WARMUP_SOCKETS)
            await close_frontends(warm)
            await asyncio.sleep(SETTLE_SECONDS)
        before = rss_bytes(hub.pid)
        async with context.progress.step(f"opening {count:,} idle frontends", count / 500):
            frontends = await open_frontends(hub.http_port, count)
            await asyncio.sleep(SETTLE_SECONDS)
        after = rss_bytes(hub.pid)
    finally:
        with contextlib.suppress(Exception):
            await close_frontends(frontends)
        await children.stop_all()
    per_connection = (after - before) / count if count else 0.0
    result: Result = {
        "scenario": "idle",
        "connections": count,
        "rss_before_mb": rounded(before / 2**20, 1),
        "rss_after_mb": rounded(after / 2**20, 1),
        "kb_per_connection": rounded(per_connection / 1024, 1),
        "targets": {"kb_per_connection<=40": per_connection / 1024 <= 40},
        "machine": machine(),
    }
    if notes:
        result["notes"] = notes
    return result
