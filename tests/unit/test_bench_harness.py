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


def test_levels_and_level_seconds() -> None:
    options = options_from_env(10.0, False)
    assert options.levels == (16, 32, 64)
    assert options.level_seconds == 5.0
    assert options.sockets == 512
    options.in_flight = 8
    assert options.levels == (8,)
    assert options.level_seconds == 10.0


def test_table_shows_levels_cpu_and_sweep() -> None:
    hub = Measurement(mode="closed", seconds=1.0, in_flight=32, completed=300)
    hub.latencies_s = [0.01] * 300
    floor = Measurement(mode="closed", seconds=1.0, in_flight=64, completed=600)
    floor.latencies_s = [0.005] * 600
    result: Result = {
        "scenario": "roundtrip",
        "in_flight_levels": [16, 32, 64],
        "floor_in_flight": 64,
        "saturation": {"hub": summary(hub), "floor": summary(floor)},
        "closed_loop": [{"in_flight": 32, "hub": summary(hub)}],
        "cpu": {
            "hub": {
                "ms_per_roundtrip": {"server": 1.5},
                "cores_busy": {"server": 0.5},
                "total_ms_per_roundtrip": 1.5,
                "total_cores_busy": 0.5,
            }
        },
        "open_loop": [{"offered_per_s": 100.0, "hub": summary(hub)}],
    }
    _headline(result, hub, floor)
    text = format_result(result)
    assert "best of 16, 32, 64 in flight (hub: 32, floor: 64)" in text
    assert "ratio to floor: 0.50" in text
    assert "server 1.50 ms (0.50 cores); all 1.50 ms" in text
    assert "open loop:" in text


class _Transport(asyncio.Transport):
    """Collects what a RawFrontend writes."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def _server_frame(opcode: int, payload: bytes) -> bytes:
    length = len(payload)
    if length < 126:
        return bytes([0x80 | opcode, length]) + payload
    if length < 65536:
        return bytes([0x80 | opcode, 126]) + length.to_bytes(2, "big") + payload
    return bytes([0x80 | opcode, 127]) + length.to_bytes(8, "big") + payload


def _unmask(frame: bytes) -> tuple[int, bytes]:
    opcode, length = frame[0] & 0x0F, frame[1] & 0x7F
    offset = 2
    if length == 126:
        length, offset = int.from_bytes(frame[2:4], "big"), 4
    mask = frame[offset : offset + 4]
    body = frame[offset + 4 : offset + 4 + length]
    return opcode, bytes(b ^ mask[i % 4] for i, b in enumerate(body))


async def test_raw_frontend_registers_reads_split_frames_and_answers_pings() -> None:
    from agentcomm.bench.rawws import RawFrontend

    seen: list[bytes] = []
    frontend = RawFrontend("127.0.0.1", 1, lambda _f, payload, _t: seen.append(payload))
    transport = _Transport()
    frontend.connection_made(transport)
    assert transport.written[0].startswith(b"GET /ws HTTP/1.1\r\n")
    frontend.data_received(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
    assert frontend.upgraded.done()
    frontend.register("probe")
    opcode, body = _unmask(transport.written[-1])
    assert opcode == 1
    assert json.loads(body) == {"message_type": "REGISTER_FRONTEND", "frontend_name": "probe"}
    response = json.dumps(
        {"message_type": "REGISTER_FRONTEND_RESPONSE", "frontend_id": "web_" + "a" * 32}
    ).encode()
    status = b'{"message_type":"AGENT_STATUS_UPDATE","agents":[],"is_full_update":true}'
    stream = _server_frame(1, response) + _server_frame(1, status)
    frontend.data_received(stream[:7])
    frontend.data_received(stream[7:])
    assert frontend.registered.result() == "web_" + "a" * 32
    big = b'{"pad":"' + b"y" * 70000 + b'"}'
    medium = b'{"pad":"' + b"z" * 300 + b'"}'
    frontend.data_received(_server_frame(1, big) + _server_frame(1, medium))
    assert seen == [big, medium]
    frontend.data_received(_server_frame(9, b"hi"))
    assert _unmask(transport.written[-1]) == (0xA, b"hi")


def test_top_functions_from_collapsed_stacks(tmp_path: Path) -> None:
    from agentcomm.bench.profiling import top_functions

    path = tmp_path / "server.txt"
    path.write_text(
        "main (a/app.py:1);send (b/ws.py:9) 30\n"
        "main (a/app.py:1);route (a/routing.py:5) 10\n"
        "main (a/app.py:1) 10\n"
    )
    top = {name: (own, inclusive) for name, own, inclusive in top_functions(path)}
    assert top["send (ws.py)"] == pytest.approx((0.6, 0.6))
    assert top["main (app.py)"] == pytest.approx((0.2, 1.0))
