"""peer: the same chat round trip through AutoGen's gRPC distributed runtime.

AutoGen (autogen-ext[grpc]) pins grpcio and protobuf versions that the project cannot share, so
it lives in a virtual environment of its own (created on first use under
~/.cache/agentcomm-bench/autogen-venv, or AGENTCOMM_BENCH_PEER_VENV) and runs as separate
processes driven by the harness: one host (GrpcWorkerAgentRuntimeHost), one worker with the
echo agent, one worker whose client sends the messages (the load generator, like the hub's
frontends). Each round trip is `send_message` to the echo agent and its answer, relayed by the
host both ways, with the same text as the hub's round trips.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import orjson

from agentcomm.bench.context import BenchContext, Result, machine
from agentcomm.bench.loadgen import Measurement
from agentcomm.bench.procs import BenchError, Children, free_port
from agentcomm.bench.scenarios.roundtrip import cpu_summary, summary
from agentcomm.bench.stacks import cpu_window
from agentcomm.bench.stats import rounded

AUTOGEN_VERSION = "0.7.5"
REQUIREMENTS = (f"autogen-core=={AUTOGEN_VERSION}", f"autogen-ext[grpc]=={AUTOGEN_VERSION}")
INSTALL_TIMEOUT = 900.0
START_TIMEOUT = 60.0
WARMUP_SECONDS = 2.0

# Runs with the peer's own interpreter; written next to its virtual environment.
PEER_SCRIPT = r'''
"""AutoGen gRPC runtime roles for the agentcomm benchmark: host, echo, client."""
import asyncio, json, signal, sys, time
from dataclasses import dataclass

from autogen_core import AgentId, MessageContext, RoutedAgent, message_handler
from autogen_core import try_get_known_serializers_for_type
from autogen_ext.runtimes.grpc import GrpcWorkerAgentRuntime, GrpcWorkerAgentRuntimeHost


@dataclass
class Chat:
    text: str


class Echo(RoutedAgent):
    def __init__(self) -> None:
        super().__init__("echo")

    @message_handler
    async def on_chat(self, message: Chat, ctx: MessageContext) -> Chat:
        return Chat("echo: " + message.text)


async def until_signal():
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()


async def host(address):
    runtime = GrpcWorkerAgentRuntimeHost(address=address)
    runtime.start()
    print(json.dumps({"ready": "host"}), flush=True)
    await until_signal()
    await runtime.stop(grace=1)


async def worker(address):
    runtime = GrpcWorkerAgentRuntime(host_address=address)
    runtime.add_message_serializer(try_get_known_serializers_for_type(Chat))
    await runtime.start()
    return runtime


async def echo(address):
    runtime = await worker(address)
    await Echo.register(runtime, "echo", lambda: Echo())
    print(json.dumps({"ready": "echo"}), flush=True)
    await until_signal()
    await runtime.stop()


async def client(address, plan):
    runtime = await worker(address)
    target = AgentId("echo", "default")
    payload = "x" * plan["payload_bytes"]

    async def one():
        await asyncio.wait_for(runtime.send_message(Chat(payload), target), 10)

    # Until the echo agent answers (its registration may still be on its way).
    deadline = time.monotonic() + 30
    while True:
        try:
            await one()
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
    print(json.dumps({"ready": "client"}), flush=True)
    go = sys.stdin.readline()
    loop = asyncio.get_running_loop()
    for phase in plan["phases"]:
        latencies, errors, completed = [], [], 0
        seconds = phase["seconds"]
        start = loop.time() + phase.get("warmup", 0.0)
        end = start + seconds
        if phase["mode"] == "closed":
            async def sender():
                nonlocal completed
                while loop.time() < end:
                    sent = loop.time()
                    try:
                        await one()
                    except Exception as exc:
                        if sent >= start and len(errors) < 1000:
                            errors.append(repr(exc)[:200])
                        continue
                    done = loop.time()
                    if sent >= start and done <= end:
                        completed += 1
                        latencies.append(done - sent)
            await asyncio.gather(*(sender() for _ in range(phase["in_flight"])))
        else:
            rate = phase["rate"]
            tasks = []
            async def timed(due):
                nonlocal completed
                try:
                    await one()
                except Exception as exc:
                    errors.append(repr(exc)[:200])
                    return
                done = loop.time()
                if done <= end:
                    completed += 1
                latencies.append(done - due)
            for index in range(max(1, int(rate * seconds))):
                due = start + index / rate
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.ensure_future(timed(due)))
            await asyncio.gather(*tasks)
        print(json.dumps({"phase": phase, "completed": completed, "errors": len(errors),
                          "error_samples": errors[:5], "latencies_s": latencies}), flush=True)
        go = sys.stdin.readline()
    await runtime.stop()


def main():
    role, address = sys.argv[1], sys.argv[2]
    if role == "host":
        asyncio.run(host(address))
    elif role == "echo":
        asyncio.run(echo(address))
    else:
        asyncio.run(client(address, json.loads(sys.argv[3])))


if __name__ == "__main__":
    main()
'''


def peer_home() -> Path:
    configured = os.environ.get("AGENTCOMM_BENCH_PEER_VENV")
    if configured:
        return Path(configured)
    return Path.home() / ".cache" / "agentcomm-bench" / "autogen-venv"


async def _run(argv: list[str], timeout: float) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(timeout):
            output, _ = await process.communicate()
    except BaseException:
        process.kill()
        await process.wait()
        raise
    return process.returncode or 0, output.decode(errors="replace")


async def ensure_peer_venv(context: BenchContext) -> Path:
    """The peer's interpreter, installing AutoGen on first use; BenchError when impossible."""
    home = peer_home()
    python = home / "bin" / "python"
    check = [str(python), "-c", "import autogen_ext.runtimes.grpc, autogen_core"]
    if python.exists():
        code, _ = await _run(check, 120)
        if code == 0:
            return python
    async with context.progress.step(f"installing AutoGen {AUTOGEN_VERSION} in {home}", 120):
        if not python.exists():
            code, output = await _run([sys.executable, "-m", "venv", str(home)], 300)
            if code != 0:
                raise BenchError(f"cannot create a virtual environment: {output.strip()[-300:]}")
        try:
            code, output = await _run(
                [str(python), "-m", "pip", "install", "--quiet", *REQUIREMENTS], INSTALL_TIMEOUT
            )
        except TimeoutError:
            raise BenchError(f"pip install did not finish in {INSTALL_TIMEOUT:.0f} s") from None
        if code != 0:
            raise BenchError(f"pip install failed: {output.strip()[-300:]}")
        code, output = await _run(check, 120)
        if code != 0:
            raise BenchError(f"AutoGen does not import: {output.strip()[-300:]}")
    return python


def _measurement(data: dict[str, Any]) -> Measurement:
    phase = data["phase"]
    measurement = Measurement(
        mode=phase["mode"],
        seconds=float(phase["seconds"]),
        in_flight=phase.get("in_flight"),
        offered_per_s=phase.get("rate"),
        completed=int(data["completed"]),
        errors=int(data["errors"]),
        latencies_s=[float(v) for v in data["latencies_s"]],
    )
    measurement.error_samples = list(data.get("error_samples", []))
    return measurement


async def _client_run(
    context: BenchContext,
    children: Children,
    python: Path,
    script: Path,
    address: str,
    phases: list[dict[str, Any]],
    processes: dict[str, int],
) -> list[tuple[Measurement, dict[str, Any]]]:
    """Runs `phases` in one client worker; returns each with the CPU the peer used."""
    plan = {"payload_bytes": context.options.payload_bytes, "phases": phases}
    client = await children.start(
        "peer-client",
        [str(python), str(script), "client", address, orjson.dumps(plan).decode()],
        stdin_pipe=True,
    )
    await client.wait_for_json("ready", START_TIMEOUT)
    processes = {**processes, "client": client.pid}
    results: list[tuple[Measurement, dict[str, Any]]] = []
    seen = 0
    for phase in phases:
        planned = float(phase["seconds"]) + float(phase.get("warmup", 0.0))
        label = (
            f"peer: {phase['in_flight']} in flight"
            if phase["mode"] == "closed"
            else f"peer: open loop {phase['rate']:.0f}/s"
        )
        async with context.progress.step(label, planned):
            with cpu_window(processes) as window:
                client.send_line("go")
                line = await client.wait_for_line(
                    lambda text: text.startswith('{"phase"'), planned + 60, skip=seen
                )
        seen = client.lines.index(line) + 1
        measurement = _measurement(orjson.loads(line))
        results.append((measurement, cpu_summary(window, measurement.completed)))
    client.send_line("done")
    await client.stop()
    return results


async def run(context: BenchContext) -> Result:
    options = context.options
    result: Result = {
        "scenario": "peer",
        "peer": f"AutoGen {AUTOGEN_VERSION} gRPC runtime (autogen-ext[grpc])",
        "duration_s": options.duration,
        "in_flight": None,
        "in_flight_levels": list(options.levels),
    }
    try:
        python = await ensure_peer_venv(context)
    except BenchError as exc:
        result["peer"] = f"unavailable: {exc}"
        result["roundtrips_per_s"] = None
        return result
    script = python.parent.parent / "agentcomm_peer.py"
    script.write_text(PEER_SCRIPT)
    address = f"127.0.0.1:{free_port()}"
    children = Children(context.log_dir)
    one_seconds = max(1.0, options.duration / 4)
    sweep_seconds = max(1.0, options.duration / 5)
    try:
        async with context.progress.step("starting AutoGen host and echo worker", 5):
            host = await children.start("peer-host", [str(python), str(script), "host", address])
            await host.wait_for_json("ready", START_TIMEOUT)
            echo = await children.start("peer-echo", [str(python), str(script), "echo", address])
            await echo.wait_for_json("ready", START_TIMEOUT)
        processes = {"host": host.pid, "echo": echo.pid}
        phases: list[dict[str, Any]] = [
            {
                "mode": "closed",
                "in_flight": level,
                "seconds": options.level_seconds,
                "warmup": WARMUP_SECONDS if index == 0 else 0.0,
            }
            for index, level in enumerate(options.levels)
        ]
        phases.append({"mode": "closed", "in_flight": 1, "seconds": one_seconds})
        measured = await _client_run(context, children, python, script, address, phases, processes)
        levels, (one, _) = measured[:-1], measured[-1]
        sat, sat_cpu = max(levels, key=lambda item: item[0].per_s)
        result["in_flight"] = sat.in_flight
        result["closed_loop"] = [
            {"in_flight": measurement.in_flight, "peer": summary(measurement)}
            for measurement, _ in levels
        ]
        result["roundtrips_per_s"] = rounded(sat.per_s, 1)
        result["p50_ms"] = rounded(sat.latency.p50_ms)
        result["p99_ms"] = rounded(sat.latency.p99_ms)
        result["p999_ms"] = rounded(sat.latency.p999_ms)
        result["errors"] = sat.errors
        result["saturation"] = {"peer": summary(sat)}
        result["one_in_flight"] = {"peer": summary(one)}
        result["cpu"] = {"peer": sat_cpu}
        rates = options.rates or tuple(sat.per_s * f for f in options.rate_fractions)
        if rates and sat.per_s > 0:
            sweep_phases: list[dict[str, Any]] = [
                {"mode": "open", "rate": max(1.0, rate_per_s), "seconds": sweep_seconds}
                for rate_per_s in rates
            ]
            swept = await _client_run(
                context, children, python, script, address, sweep_phases, processes
            )
            result["open_loop"] = [
                {"offered_per_s": rounded(m.offered_per_s, 1), "peer": summary(m)} for m, _ in swept
            ]
    except (BenchError, TimeoutError) as exc:
        result["peer"] = f"unavailable: the AutoGen run failed: {exc}"
        result["roundtrips_per_s"] = None
    finally:
        await children.stop_all()
    result["machine"] = machine()
    await asyncio.sleep(0)
    return result
