"""history: what conversation history costs the chat, and how fast it reads back.

1. The memory-bus round trip (frontend → hub → echo agent → frontend) on two hubs started side
   by side, one with history off (HISTORY_URL=none, the baseline) and one keeping it in SQLite
   (the default), taking turns at each in-flight level, three rounds; the headline is the
   median of the rounds' ratios of their best levels (goal ≥ 0.9).
   Afterwards the history hub is asked how much it kept, so that a writer that fell behind or
   dropped messages shows.
2. Replaying 10,000 messages of one conversation, and listing 1,000 conversations of 100
   messages each page by page, straight against the store: SQLite, and PostgreSQL when one
   answers on 127.0.0.1:5432 (bench/history_store.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

import orjson

from agentcomm.bench.context import BenchContext, Result, machine
from agentcomm.bench.frontends import Frontends
from agentcomm.bench.history_store import measure_stores
from agentcomm.bench.loadgen import Target, closed_loop
from agentcomm.bench.procs import Children, wait_http_ok
from agentcomm.bench.scenarios.roundtrip import (
    READY_TIMEOUT,
    Saturation,
    _saturate,
    _warmup,
    cpu_summary,
    summary,
)
from agentcomm.bench.stacks import MemoryHub
from agentcomm.bench.stats import ratio, rounded

GOAL = 0.9
ROUNDS = 3


async def run(context: BenchContext) -> Result:
    options = context.options
    payload = "x" * options.payload_bytes
    result: Result = {
        "scenario": "history",
        "bus": "memory",
        "duration_s": options.duration,
        "in_flight_levels": list(options.levels),
        "frontends": options.sockets,
        "goal_ratio_with_history": GOAL,
    }
    with tempfile.TemporaryDirectory(prefix="agentcomm-bench-history-") as folder:
        result["roundtrip"] = await _roundtrip(context, payload, Path(folder))
        async with context.progress.step("replay and listing on the stores", 30):
            result["stores"] = await measure_stores(Path(folder))
    roundtrip = result["roundtrip"]
    result["roundtrips_per_s_without_history"] = roundtrip["without_history"]["roundtrips_per_s"]
    result["roundtrips_per_s_with_history"] = roundtrip["with_history"]["roundtrips_per_s"]
    result["ratio_with_history"] = roundtrip["ratio"]
    result["hub_cpu_ratio_with_history"] = roundtrip["hub_cpu_ratio_with_history"]
    sqlite = result["stores"]["sqlite"]
    result["replay_10000_s_sqlite"] = sqlite["replay"]["replay_s"]
    postgres = result["stores"].get("postgresql", {})
    result["replay_10000_s_postgresql"] = postgres.get("replay", {}).get("replay_s")
    result["machine"] = machine()
    return result


async def _roundtrip(context: BenchContext, payload: str, folder: Path) -> dict[str, Any]:
    options = context.options
    children = Children(context.log_dir)
    sides: dict[str, tuple[Frontends, MemoryHub]] = {}
    try:
        async with context.progress.step("starting two hubs and their agents", 10):
            for name, history_url in (
                ("without_history", "none"),
                ("with_history", f"sqlite:///{folder / 'roundtrip.sqlite3'}"),
            ):
                hub = MemoryHub(context.settings, children, name=name, history_url=history_url)
                await hub.start()
                frontends = Frontends(
                    hub.ws_url, payload=payload, compression=options.ws_compression
                )
                await frontends.open(options.sockets)
                await frontends.wait_until_answering(READY_TIMEOUT)
                sides[name] = (frontends, hub)
        warmup = _warmup(options.duration)
        for name, (frontends, _) in sides.items():
            async with context.progress.step(f"{name}: warming up", warmup):
                await closed_loop(frontends, options.levels[-1], warmup)
        targets: dict[str, tuple[Target, dict[str, int]]] = {
            name: (frontends, {**hub.processes, "loadgen": os.getpid()})
            for name, (frontends, hub) in sides.items()
        }
        # Several rounds, each side's best of each: on a shared machine one round is at the
        # mercy of whatever else ran meanwhile; the ratio of each round compares like with like.
        rounds = [await _saturate(context, targets) for _ in range(ROUNDS)]

        def round_ratio(found: dict[str, Saturation]) -> float:
            return (
                ratio(found["with_history"].best.per_s, found["without_history"].best.per_s) or 0.0
            )

        # The sides as measured in the median round, beside its ratio.
        ordered = sorted(rounds, key=round_ratio)
        found = ordered[len(ordered) // 2]
        out: dict[str, Any] = {name: summary(saturation.best) for name, saturation in found.items()}
        out["ratio"] = rounded(round_ratio(found))
        out["ratios_of_rounds"] = [rounded(round_ratio(each)) for each in rounds]
        # CPU per round trip moves far less with the machine's load than rates do: the hub's
        # own, with history against without, in each round.
        out["cpu"] = {name: cpu_summary(sat.cpu, sat.best.completed) for name, sat in found.items()}
        hub_ms = [
            (
                cpu_summary(each["with_history"].cpu, each["with_history"].best.completed),
                cpu_summary(each["without_history"].cpu, each["without_history"].best.completed),
            )
            for each in rounds
        ]
        cpu_ratios = sorted(
            ratio(on["ms_per_roundtrip"].get("hub"), off["ms_per_roundtrip"].get("hub")) or 0.0
            for on, off in hub_ms
        )
        out["hub_cpu_ratio_with_history"] = rounded(cpu_ratios[len(cpu_ratios) // 2])
        out["hub_cpu_ratios_of_rounds"] = [rounded(value) for value in cpu_ratios]
        # The writer stores off the chat path: a moment for the last batch before counting.
        await asyncio.sleep(1.0)
        out["kept"] = await _kept(sides["with_history"][1])
        out["levels"] = [
            {"in_flight": m.in_flight, name: summary(m)}
            for name, saturation in found.items()
            for m in saturation.levels
        ]
        return out
    finally:
        for frontends, _ in sides.values():
            with contextlib.suppress(Exception):
                await frontends.close()
        await children.stop_all()


async def _kept(hub: MemoryHub) -> dict[str, Any]:
    """How many messages the history hub has stored (all conversations, all users)."""
    stored = conversations = 0
    cursor = ""
    while True:
        path = "/api/conversations?limit=1000" + (f"&before={cursor}" if cursor else "")
        body = orjson.loads(await wait_http_ok(hub.http_port, path, 10.0, None))
        for item in body["conversations"]:
            conversations += 1
            stored += item["last_seq"] - item["first_seq"] + 1
        cursor = body.get("next_cursor") or ""
        if not cursor:
            break
    return {"conversations": conversations, "messages": stored}
