"""What a run measures: the command line's duration plus knobs with sensible defaults.

Knobs come from `python -m agentcomm.bench` flags or, for `agentcomm bench`, from
AGENTCOMM_BENCH_* environment variables (e.g. AGENTCOMM_BENCH_FANOUT_SIZES=1000,2000 where 10,000
sockets exceed what the machine allows).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

ENV_PREFIX = "AGENTCOMM_BENCH_"


@dataclass
class BenchOptions:
    duration: float = 10.0
    as_json: bool = False
    # Round trips at once in the closed loop at saturation: each level is measured (for half
    # the duration) and the best one is the saturation number. `in_flight` > 0 measures only
    # that level.
    in_flight_levels: tuple[int, ...] = (16, 32, 64)
    in_flight: int = 0
    # WebSocket frontends the round trips are spread over (each sends at a human pace).
    frontends: int = 512
    # Whether the chatting frontends offer permessage-deflate, as browsers do.
    ws_compression: bool = True
    # Characters of text in each chat message.
    payload_bytes: int = 64
    # Open-loop rates as fractions of the hub's measured saturation throughput.
    rate_fractions: tuple[float, ...] = (0.25, 0.5, 0.75, 0.9, 1.1)
    # Fixed open-loop rates (round trips/s) instead of fractions, the same for every side.
    rates: tuple[float, ...] = ()
    # roundtrip-memory also measures the hub with the echo agent on its in-process bus.
    memory_agent_in_process: bool = True
    fanout_sizes: tuple[int, ...] = (1000, 10000)
    fanout_changes: int = 20
    idle_connections: int = 10000
    presence_agents: int = 1000
    presence_frontends: int = 1000
    presence_losses: int = 20
    # stream: streamed answers (REPLY_CHUNKs). Closed loop at saturation: this many frontends
    # each asking for answers of `stream_tokens` tokens produced as fast as the agent can.
    stream_frontends: int = 16
    # Sockets the closed loop's answers are spread over, so that none is rate-limited.
    stream_sockets: int = 256
    stream_tokens: int = 200
    # Realistic load: answers of `stream_paced_tokens` tokens at `stream_rate` tokens/s each;
    # concurrent answers doubled from `stream_start` (at most `stream_max`), then bisected,
    # while the p99 delay added between tokens stays within `stream_bound_ms`, for at most
    # `stream_search_seconds` per bus.
    stream_rate: float = 50.0
    stream_paced_tokens: int = 300
    stream_bound_ms: float = 100.0
    stream_start: int = 16
    stream_max: int = 4096
    stream_search_seconds: float = 150.0
    # The streamer agent's stream_merge_ms (below 0: no merging, one chunk per token).
    stream_merge_ms: float = -1.0
    # Which sides of `stream` run (a lever measured on one bus need not wait for the other).
    stream_rabbitmq: bool = True
    stream_memory: bool = True
    plots: bool = True
    # Sample the measured processes with py-spy during the saturation phase.
    profile: bool = False
    # Also measure a floor whose relays handle one delivery at a time (as the hub's ordered
    # consumers do), to tell the cost of ordering from the cost of the hub's Python work.
    serial_floor: bool = False
    # roundtrip-traced: the share of chat turns traced (1.0: every one, as the target asks).
    trace_sample: float = 1.0
    progress: bool = True
    out_dir: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def levels(self) -> tuple[int, ...]:
        if self.in_flight > 0:
            return (self.in_flight,)
        return tuple(sorted({level for level in self.in_flight_levels if level > 0})) or (64,)

    @property
    def sockets(self) -> int:
        return max(max(self.levels), self.frontends)

    @property
    def level_seconds(self) -> float:
        if len(self.levels) == 1:
            return self.duration
        return max(2.0, self.duration / 2)

    @property
    def results_dir(self) -> Path:
        if self.out_dir is not None:
            return self.out_dir
        return default_out_dir()


def default_out_dir() -> Path:
    """The repository's benchmarks/ when run from its checkout, else a cache folder."""
    here = Path.cwd()
    if (here / "src" / "agentcomm" / "bench").is_dir() and (here / "benchmarks").is_dir():
        return here / "benchmarks" / "results"
    return Path.home() / ".cache" / "agentcomm-bench" / "results"


def parse_option(kind: Any, raw: str) -> Any:
    """A knob's value from text, by the type named in BenchOptions."""
    if kind in (int, "int"):
        return int(raw)
    if kind in (float, "float"):
        return float(raw)
    if kind in (bool, "bool"):
        return raw.strip().lower() in {"1", "true", "yes", "on"}
    if "tuple[int" in str(kind):
        return tuple(int(part) for part in raw.split(",") if part.strip())
    if "tuple[float" in str(kind):
        return tuple(float(part) for part in raw.split(",") if part.strip())
    if "Path" in str(kind):
        return Path(raw)
    raise ValueError(f"cannot parse {raw!r} as {kind}")


def options_from_env(duration: float, as_json: bool) -> BenchOptions:
    """Options for `agentcomm bench`: the command line's two, the rest from the environment."""
    options = BenchOptions(duration=duration, as_json=as_json)
    for item in fields(BenchOptions):
        if item.name in {"duration", "as_json", "notes"}:
            continue
        raw = os.environ.get(ENV_PREFIX + item.name.upper())
        if raw is None:
            continue
        try:
            setattr(options, item.name, parse_option(item.type, raw))
        except ValueError as exc:
            raise ValueError(f"{ENV_PREFIX}{item.name.upper()}: {exc}") from None
    return options
