"""Scraping a hub's /metrics during a measurement, as Prometheus would: one sample of the
metrics the Grafana dashboard (deploy/grafana-dashboard.json) shows, every `interval` seconds.

The series go into the scenario's JSON and `bench/dashboard.py` renders the dashboard's panels
from them, so that the picture in the docs comes from a real run.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from agentcomm.bench.procs import BenchError, http_get

# The families the dashboard reads (histograms by their _bucket/_count/_sum samples).
DASHBOARD_METRICS = (
    "agentcomm_messages",
    "agentcomm_time_to_first_token_seconds",
    "agentcomm_time_to_final_answer_seconds",
    "agentcomm_bus_publish_seconds",
    "agentcomm_queue_messages",
    "agentcomm_queue_consumers",
    "agentcomm_frontends_connected",
    "agentcomm_agents_connected",
    "agentcomm_refusals",
    "agentcomm_resumes",
    "agentcomm_slow_client_closes",
)


def parse(text: str) -> dict[str, float]:
    """`name{label="value",...}` -> value, for the dashboard's families."""
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in DASHBOARD_METRICS:
            continue
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


@contextlib.asynccontextmanager
async def scraped(port: int, interval: float = 1.0) -> AsyncIterator[list[dict[str, Any]]]:
    """Scrapes 127.0.0.1:port/metrics every `interval` seconds while the body runs; yields
    the list the samples are appended to ({"t": seconds since start, "samples": {...}})."""
    series: list[dict[str, Any]] = []
    started = time.monotonic()

    async def scrape() -> None:
        while True:
            try:
                status, body = await http_get(port, "/metrics", timeout=2.0)
            except (OSError, TimeoutError, BenchError):
                status, body = 0, b""
            if status == 200:
                elapsed = round(time.monotonic() - started, 3)
                series.append({"t": elapsed, "samples": parse(body.decode())})
            await asyncio.sleep(interval)

    task = asyncio.create_task(scrape(), name=f"scrape-{port}")
    try:
        yield series
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
