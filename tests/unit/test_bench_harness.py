"""The benchmark harness's arithmetic and output shape (no timing is asserted anywhere)."""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agentcomm.bench.context import Result
from agentcomm.bench.loadgen import Measurement, closed_loop, open_loop
from agentcomm.bench.messages import chat_turn_bus_sizes
from agentcomm.bench.options import options_from_env
from agentcomm.bench.report import format_result, json_line
from agentcomm.bench.scenarios.roundtrip import _headline, summary
from agentcomm.bench.stats import percentile, ratio, rounded, summarize

ROUNDTRIP_KEYS = {
    "scenario",
    "duration_s",
    "in_flight",
    "roundtrips_per_s",
    "p50_ms",
    "p99_ms",
    "p999_ms",
    "floor_roundtrips_per_s",
    "ratio_to_floor",
}


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 0.999) == 100.0
    assert percentile(values, 0.0) == 1.0
    assert percentile([7.0], 0.99) == 7.0
    assert math.isnan(percentile([], 0.5))
    with pytest.raises(ValueError, match=r"within 0\.\.1"):
        percentile(values, 1.5)


def test_summary_reports_milliseconds() -> None:
    latency = summarize([0.003, 0.001, 0.002, 0.010])
    assert latency.count == 4
    assert latency.p50_ms == pytest.approx(2.0)
    assert latency.p99_ms == pytest.approx(10.0)
    assert latency.max_ms == pytest.approx(10.0)
    assert latency.mean_ms == pytest.approx(4.0)
    assert math.isnan(summarize([]).p50_ms)


def test_ratio_and_rounding_never_produce_nan_in_json() -> None:
    assert ratio(900.0, 1000.0) == pytest.approx(0.9)
    assert ratio(900.0, 0.0) is None
    assert ratio(None, 1000.0) is None
    assert ratio(math.nan, 1000.0) is None
    assert rounded(math.nan) is None
    assert rounded(1.23456, 2) == 1.23


def test_headline_has_the_probe_keys_and_the_ratio() -> None:
    hub = Measurement(mode="closed", seconds=2.0, in_flight=8, completed=1000)
    hub.latencies_s = [0.004] * 990 + [0.020] * 10
    floor = Measurement(mode="closed", seconds=2.0, in_flight=8, completed=2000)
    floor.latencies_s = [0.002] * 2000
    result: Result = {"scenario": "roundtrip", "duration_s": 2.0, "in_flight": 8}
    _headline(result, hub, floor)
    assert result.keys() >= ROUNDTRIP_KEYS
    assert result["roundtrips_per_s"] == 500.0
    assert result["floor_roundtrips_per_s"] == 1000.0
    assert result["ratio_to_floor"] == 0.5
    assert result["p50_ms"] == pytest.approx(4.0)
    assert result["p99_ms"] == pytest.approx(4.0)
    assert result["p999_ms"] == pytest.approx(20.0)
    decoded = json.loads(json_line(result))
    assert decoded["ratio_to_floor"] == 0.5
    assert "ratio to floor: 0.50" in format_result({**result, "saturation": {"hub": summary(hub)}})


def test_headline_without_a_floor_says_none() -> None:
    hub = Measurement(mode="closed", seconds=1.0, completed=0)
    result: Result = {"scenario": "roundtrip-memory"}
    _headline(result, hub, None)
    assert result["floor_roundtrips_per_s"] is None
    assert result["ratio_to_floor"] is None
    assert result["roundtrips_per_s"] is None or result["roundtrips_per_s"] == 0.0
    json.loads(json_line(result))


def test_floor_carries_the_hub_message_sizes() -> None:
    sizes = chat_turn_bus_sizes("x" * 64)
    assert len(sizes) == 5
    assert all(300 < size < 1000 for size in sizes)


def test_options_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTCOMM_BENCH_IN_FLIGHT", "8")
    monkeypatch.setenv("AGENTCOMM_BENCH_FANOUT_SIZES", "100,200")
    monkeypatch.setenv("AGENTCOMM_BENCH_PLOTS", "0")
    options = options_from_env(3.0, True)
    assert options.in_flight == 8
    assert options.fanout_sizes == (100, 200)
    assert options.plots is False
    assert options.duration == 3.0
    monkeypatch.setenv("AGENTCOMM_BENCH_IN_FLIGHT", "many")
    with pytest.raises(ValueError, match="AGENTCOMM_BENCH_IN_FLIGHT"):
        options_from_env(3.0, True)


class _Instant:
    """A target that answers at once, for the load generators' bookkeeping."""

    slots = 2

    def __init__(self) -> None:
        self.calls = 0

    async def roundtrip(self, slot: int) -> None:
        assert 0 <= slot < self.slots
        self.calls += 1
        await asyncio.sleep(0.001)


async def test_load_generators_count_what_they_measure() -> None:
    target = _Instant()
    closed = await closed_loop(target, 2, 0.2)
    assert closed.completed > 0
    assert closed.errors == 0
    assert len(closed.latencies_s) == closed.completed
    opened = await open_loop(target, 100.0, 0.2)
    assert opened.offered_per_s == 100.0
    assert opened.completed + opened.errors <= 20
    assert len(opened.latencies_s) >= opened.completed


def test_roundtrip_memory_prints_one_json_object(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "AGENTCOMM_BENCH_IN_FLIGHT": "2",
        "AGENTCOMM_BENCH_FRONTENDS": "64",
        "AGENTCOMM_BENCH_RATE_FRACTIONS": "0.5",
        "AGENTCOMM_BENCH_MEMORY_AGENT_IN_PROCESS": "0",
        "AGENTCOMM_BENCH_PLOTS": "0",
        "AGENTCOMM_BENCH_PROGRESS": "0",
        "AGENTCOMM_BENCH_OUT_DIR": str(tmp_path),
    }
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "agentcomm",
            "bench",
            "roundtrip-memory",
            "--duration",
            "1",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=100,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    lines = [line for line in completed.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, completed.stdout
    result = json.loads(lines[0])
    assert result.keys() >= ROUNDTRIP_KEYS
    assert result["scenario"] == "roundtrip-memory"
    assert result["errors"] == 0
    assert result["roundtrips_per_s"] > 0
    assert (tmp_path / "roundtrip-memory.json").is_file()
