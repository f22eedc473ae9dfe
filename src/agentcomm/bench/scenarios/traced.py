"""roundtrip-traced: what tracing costs a chat turn, on and off in the same run.

Two copies of the `roundtrip` stack (server, broker, echo agent on RabbitMQ), each in a vhost
of its own: one without the OTEL_* variables, one exporting every span (a 100 % sample) over
OTLP to a sink that answers without decoding (`bench/otlpsink.py`). The closed loop takes
turns between them at each in-flight level, as `roundtrip` does with its floor, so that the
machine's drift hits both alike; the ratio traced / off is the cost. CPU per round trip is
reported per process (the sink's own is left out: a collector runs elsewhere in production).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

from agentcomm.bench.context import BenchContext, Result, machine
from agentcomm.bench.dashboard import render
from agentcomm.bench.frontends import Frontends
from agentcomm.bench.loadgen import Target, closed_loop
from agentcomm.bench.output import plots_dir
from agentcomm.bench.procs import BenchError, Children, free_port
from agentcomm.bench.scenarios.roundtrip import (
    READY_TIMEOUT,
    _check_reachable,
    _closed,
    _levels_table,
    _phase_seconds,
    _saturate,
    _warmup,
    cpu_summary,
    summary,
)
from agentcomm.bench.scrape import scraped
from agentcomm.bench.stacks import RabbitHub
from agentcomm.bench.stats import ratio, rounded
from agentcomm.bench.vhost import bench_vhost

SINK_START_TIMEOUT = 15.0


def traced_env(sample: float) -> dict[str, str]:
    """The standard variables the traced stack runs with: every turn, or a share of them
    (decided where the turn starts, at the hub, and followed by every hop after it)."""
    env = {"OTEL_EXPORTER_OTLP_INSECURE": "true"}
    if sample >= 1.0:
        env["OTEL_TRACES_SAMPLER"] = "parentbased_always_on"
    else:
        env["OTEL_TRACES_SAMPLER"] = "parentbased_traceidratio"
        env["OTEL_TRACES_SAMPLER_ARG"] = str(sample)
    return env


async def _wait_listening(port: int, children: Children) -> None:
    async with asyncio.timeout(SINK_START_TIMEOUT):
        while True:
            children.check_alive()
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.1)
                continue
            writer.close()
            return


async def run(context: BenchContext) -> Result:
    options = context.options
    payload = "x" * options.payload_bytes
    one_seconds, _ = _phase_seconds(options.duration)
    notes: list[str] = []
    result: Result = {
        "scenario": "roundtrip-traced",
        "bus": "rabbitmq",
        "sample": options.trace_sample,
        "duration_s": options.duration,
        "in_flight_levels": list(options.levels),
        "frontends": options.sockets,
    }
    settings = context.settings
    await _check_reachable(settings.rabbitmq_host, settings.rabbitmq_port)
    # Whatever this process was started with, the untraced side runs without OTEL_*.
    untraced_env = {key: "" for key in os.environ if key.startswith("OTEL_")}
    async with (
        bench_vhost(settings, notes) as off_settings,
        bench_vhost(settings, notes) as on_settings,
    ):
        if off_settings.rabbitmq_vhost == on_settings.rabbitmq_vhost:
            raise BenchError(
                "roundtrip-traced needs two private vhosts (rabbitmqctl on this machine); "
                "leave RABBITMQ_VHOST unset."
            )
        children = Children(context.log_dir)
        off_front = Frontends("", payload=payload, compression=options.ws_compression)
        on_front = Frontends("", payload=payload, compression=options.ws_compression)
        try:
            async with context.progress.step("starting two stacks and the trace sink", 12):
                sink_port = free_port()
                await children.start_module(
                    "otlp-sink", "agentcomm.bench.otlpsink", [str(sink_port)], dict(os.environ)
                )
                await _wait_listening(sink_port, children)
                off = RabbitHub(off_settings, children, prefix="off-", env=untraced_env)
                endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink_port}"}
                on = RabbitHub(
                    on_settings,
                    children,
                    prefix="traced-",
                    env=traced_env(options.trace_sample) | endpoint,
                )
                for hub, front in ((off, off_front), (on, on_front)):
                    await hub.start()
                    front.ws_url = hub.ws_url
                    await front.open(options.sockets)
                    await front.wait_until_answering(READY_TIMEOUT)
            me = {"loadgen": os.getpid()}
            sides: dict[str, tuple[Target, dict[str, int]]] = {
                "off": (off_front, {**off.processes, **me}),
                "traced": (on_front, {**on.processes, **me}),
            }
            warmup = _warmup(options.duration)
            async with context.progress.step("warming up", 2 * warmup):
                await closed_loop(off_front, options.levels[-1], warmup)
                await closed_loop(on_front, options.levels[-1], warmup)
            # Both hubs' /metrics every second, as Prometheus would scrape them: the
            # dashboard's panels in the docs are drawn from these.
            async with scraped(off.http_port) as off_series, scraped(on.http_port) as on_series:
                found = await _saturate(context, sides)
                one = {
                    name: summary((await _closed(context, name, target, procs, 1, one_seconds))[0])
                    for name, (target, procs) in sides.items()
                }
            off_sat, on_sat = found["off"].best, found["traced"].best
        finally:
            for front in (off_front, on_front):
                with contextlib.suppress(Exception):
                    await front.close()
            await children.stop_all()
    traced_ratio = ratio(on_sat.per_s, off_sat.per_s)
    result.update(
        {
            "roundtrips_per_s": rounded(on_sat.per_s, 1),
            "off_roundtrips_per_s": rounded(off_sat.per_s, 1),
            "ratio_traced_to_off": rounded(traced_ratio),
            "throughput_lost": None if traced_ratio is None else rounded(1 - traced_ratio),
            "saturation": {"off": summary(off_sat), "traced": summary(on_sat)},
            "one_in_flight": one,
            "closed_loop": _levels_table(found),
            "cpu": {
                "off": cpu_summary(found["off"].cpu, off_sat.completed),
                "traced": cpu_summary(found["traced"].cpu, on_sat.completed),
            },
            "targets": _targets(traced_ratio),
            "metrics_series": {"off": off_series, "traced": on_series},
            "machine": machine(),
        }
    )
    picture = render(
        off_series,
        plots_dir(options) / "dashboard.png",
        "agentcomm dashboard panels, from /metrics scraped during roundtrip-traced (hub untraced)",
    )
    if picture is not None:
        result["dashboard_png"] = str(picture)
    if notes:
        result["notes"] = notes
    return result


def _targets(traced_ratio: float | None) -> dict[str, Any]:
    """The issue's target, reported beside the numbers (never asserted)."""
    return {"throughput_lost<=15%": None if traced_ratio is None else traced_ratio >= 0.85}
