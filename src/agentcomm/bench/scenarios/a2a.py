"""a2a: a chat turn through the A2A gateway against the same turn over the WebSocket.

One hub on the in-process bus (server and broker in one process), the echo agent and the
typist in processes of their own over gRPC, as in roundtrip-memory. In the same run and at the
same number of round trips in flight, the sides take turns:

- SendMessage: A2A `SendMessage` to `/a2a/echo` (HTTP/1.1 keep-alive connections, one per
  round trip in flight, by the lean client `bench/rawhttp.py`) until its completed task,
  against a WebSocket `TEXT` to echo until its `REPLY`;
- streaming: A2A `SendStreamingMessage` to `/a2a/typist` until the final status (an artifact
  update per chunk on the way), against a WebSocket `TEXT` from a frontend that takes
  `REPLY_CHUNK`s until the `REPLY`. The typist types at 1 ms a word.

The ratio A2A / WebSocket is the number to watch (the goal: at least 0.5).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from typing import Any

import httpx
import orjson

from agentcomm.bench.context import BenchContext, Result, machine
from agentcomm.bench.frontends import Frontends, RoundTripFailed
from agentcomm.bench.loadgen import ROUNDTRIP_TIMEOUT, Measurement, closed_loop
from agentcomm.bench.procs import BenchError, Children
from agentcomm.bench.rawhttp import RawHttp
from agentcomm.bench.scenarios.roundtrip import cpu_summary, summary
from agentcomm.bench.stacks import (
    START_TIMEOUT,
    MemoryHub,
    _child_settings,
    _wait_agent_online,
    cpu_window,
)
from agentcomm.bench.stats import ratio, rounded

TYPIST_ID = "typist"
TYPIST_MS_PER_WORD = 1
GOAL = 0.5
ROUNDS = 2
_FINAL = (b"TASK_STATE_COMPLETED", b"TASK_STATE_FAILED", b"TASK_STATE_CANCELED")


class GatewayCalls:
    """Round trips over A2A JSON-RPC: a load-generation target (`loadgen.Target`)."""

    def __init__(self, port: int, agent_id: str, connections: int, payload: str) -> None:
        self.path = f"/a2a/{agent_id}"
        self.payload = payload
        self._connections = connections
        self._ids = itertools.count()
        self._http = RawHttp(
            "127.0.0.1",
            port,
            connections,
            {"A2A-Version": "1.0", "Content-Type": "application/json"},
        )

    async def open(self) -> None:
        await self._http.open()

    @property
    def slots(self) -> int:
        return self._connections

    def _body(self, method: str) -> bytes:
        number = next(self._ids)
        return orjson.dumps(
            {
                "jsonrpc": "2.0",
                "id": number,
                "method": method,
                "params": {
                    "message": {
                        "messageId": f"bench-{number}",
                        "role": "ROLE_USER",
                        "parts": [{"text": self.payload}],
                    }
                },
            }
        )

    async def roundtrip(self, slot: int) -> None:
        async with asyncio.timeout(ROUNDTRIP_TIMEOUT):
            body = await self._http.post(self.path, self._body("SendMessage"))
        data: dict[str, Any] = orjson.loads(body)
        state = data.get("result", {}).get("task", {}).get("status", {}).get("state")
        if state != "TASK_STATE_COMPLETED":
            raise RoundTripFailed(f"{state}: {body[:200]!r}")

    async def close(self) -> None:
        await self._http.close()


class StreamingCalls(GatewayCalls):
    async def roundtrip(self, slot: int) -> None:
        async with asyncio.timeout(ROUNDTRIP_TIMEOUT):
            body = await self._http.post(self.path, self._body("SendStreamingMessage"))
        # The last event is the final status.
        last = body.rstrip().rpartition(b"data:")[2]
        if b"statusUpdate" not in last or _FINAL[0] not in last:
            raise RoundTripFailed(f"The stream did not end completed: {last[:200]!r}")


async def _typist(hub: MemoryHub, children: Children, context: BenchContext) -> int:
    env = _child_settings(context.settings, message_bus="memory", grpc_port=hub.grpc_port)
    agent = await children.start_agentcomm(
        "typist", ["agent", "typist", "--id", TYPIST_ID, "--transport", "grpc"], env
    )
    await _wait_agent_online(hub.http_port, TYPIST_ID, agent, START_TIMEOUT)
    async with httpx.AsyncClient(timeout=10) as http:
        answer = await http.post(
            f"http://127.0.0.1:{hub.http_port}/api/agents/{TYPIST_ID}/commands",
            json={"type": "pace", "parameters": {"ms": str(TYPIST_MS_PER_WORD)}},
        )
        if answer.status_code != 200 or not answer.json().get("success"):
            raise BenchError(f"The typist did not take its pace: {answer.text}")
    return agent.pid


async def _compare(
    context: BenchContext,
    label: str,
    sides: dict[str, Any],
    processes: dict[str, int],
    in_flight: int,
) -> Result:
    """Each side in turn, ROUNDS times (so that the machine's drift hits both alike); each
    side's best round is its number."""
    seconds = context.options.level_seconds
    found: dict[str, tuple[Measurement, Any]] = {}
    for name, target in sides.items():
        async with context.progress.step(f"{label} warm-up: {name}", 1.0):
            await closed_loop(target, in_flight, 1.0)
    for round_number in range(1, ROUNDS + 1):
        for name, target in sides.items():
            step = f"{label}: {name}, {in_flight} in flight, round {round_number}"
            async with context.progress.step(step, seconds):
                with cpu_window(processes) as window:
                    measurement = await closed_loop(target, in_flight, seconds)
            best = found.get(name)
            if best is None or measurement.per_s > best[0].per_s:
                found[name] = (measurement, window)
    a2a, websocket = found["a2a"][0], found["websocket"][0]
    return {
        "a2a": summary(a2a),
        "websocket": summary(websocket),
        "ratio_a2a_to_websocket": rounded(ratio(a2a.per_s, websocket.per_s), 3),
        "cpu": {name: cpu_summary(window, m.completed) for name, (m, window) in found.items()},
    }


async def run(context: BenchContext) -> Result:
    options = context.options
    in_flight = options.levels[-1]
    payload = "x" * options.payload_bytes
    result: Result = {
        "scenario": "a2a",
        "bus": "memory",
        "in_flight": in_flight,
        "frontends": options.sockets,
        "duration_s": options.level_seconds,
        "goal_ratio": GOAL,
    }
    children = Children(context.log_dir)
    opened: list[Frontends | GatewayCalls] = []
    try:
        async with context.progress.step("starting hub, echo and typist", 5):
            hub = MemoryHub(context.settings, children)
            await hub.start()
            typist_pid = await _typist(hub, children, context)
            frontends = Frontends(hub.ws_url, payload=payload, compression=options.ws_compression)
            streaming = Frontends(
                hub.ws_url,
                receiver_id=TYPIST_ID,
                payload=payload,
                compression=options.ws_compression,
                capabilities={"stream": True},
            )
            calls = GatewayCalls(hub.http_port, "echo", in_flight, payload)
            streams = StreamingCalls(hub.http_port, TYPIST_ID, in_flight, payload)
            opened += [frontends, streaming, calls, streams]
            await calls.open()
            await streams.open()
            for sockets in (frontends, streaming):
                # As many as roundtrip-memory opens: each sends within the hub's rate limit.
                await sockets.open(options.sockets)
                await sockets.wait_until_answering(START_TIMEOUT)
        processes = {**hub.processes, "typist": typist_pid, "loadgen": os.getpid()}
        result["send_message"] = await _compare(
            context, "SendMessage", {"websocket": frontends, "a2a": calls}, processes, in_flight
        )
        result["streaming"] = await _compare(
            context, "streaming", {"websocket": streaming, "a2a": streams}, processes, in_flight
        )
    finally:
        for target in opened:
            with contextlib.suppress(Exception):
                await target.close()
        await children.stop_all()
    result["roundtrips_per_s"] = result["send_message"]["a2a"]["roundtrips_per_s"]
    result["ratio_a2a_to_websocket"] = result["send_message"]["ratio_a2a_to_websocket"]
    result["streams_per_s"] = result["streaming"]["a2a"]["roundtrips_per_s"]
    result["streaming_ratio_a2a_to_websocket"] = result["streaming"]["ratio_a2a_to_websocket"]
    result["machine"] = machine()
    return result
