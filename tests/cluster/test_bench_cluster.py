"""`agentcomm bench cluster` runs end to end on RabbitMQ and reports both of its measures:
cross-hub against same-hub round trips of one run, and presence across hubs (no speed is
asserted, only that every number is there and nothing failed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(300)]


def test_bench_cluster_prints_both_measures(rabbitmq_available: None, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "AGENTCOMM_BENCH_IN_FLIGHT_LEVELS": "4",
        "AGENTCOMM_BENCH_FRONTENDS": "8",
        "AGENTCOMM_BENCH_PRESENCE_FRONTENDS": "60",
        "AGENTCOMM_BENCH_FANOUT_CHANGES": "4",
        "AGENTCOMM_BENCH_PLOTS": "0",
        "AGENTCOMM_BENCH_PROGRESS": "0",
        "AGENTCOMM_BENCH_OUT_DIR": str(tmp_path),
    }
    completed = subprocess.run(
        [sys.executable, "-m", "agentcomm", "bench", "cluster", "--duration", "1", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    [line] = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    result = json.loads(line)
    round_trips, presence = result["round_trips"], result["presence"]
    assert round_trips["same_hub_roundtrips_per_s"] > 0
    assert round_trips["cross_hub_roundtrips_per_s"] > 0
    assert round_trips["saturation"]["cross-hub"]["errors"] == 0
    assert (presence["frontends"], presence["timed_frontends"]) == (60, 40)
    assert presence["each_frontend_p99_ms"] > 0
    assert set(result["targets"]) == {"cross_to_same_ratio>=0.85", "presence_p99<=100ms"}
