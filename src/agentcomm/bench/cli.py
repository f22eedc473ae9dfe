"""`agentcomm bench SCENARIO [--duration S] [--json]`: run scenarios, print a table or JSON."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from agentcomm.bench.context import BenchContext, Result
from agentcomm.bench.options import BenchOptions, options_from_env
from agentcomm.bench.procs import BenchError, raise_fd_limit
from agentcomm.bench.progress import Progress
from agentcomm.bench.report import format_result, json_line
from agentcomm.bench.scenarios import SCENARIO_NAMES, SCENARIOS, load_scenario
from agentcomm.config import Settings

log = logging.getLogger(__name__)

_ROUNDTRIP_KEYS = (
    "duration_s",
    "in_flight",
    "roundtrips_per_s",
    "p50_ms",
    "p99_ms",
    "p999_ms",
    "floor_roundtrips_per_s",
    "ratio_to_floor",
)
HEADLINE_KEYS: dict[str, tuple[str, ...]] = {
    "roundtrip": _ROUNDTRIP_KEYS,
    "roundtrip-memory": _ROUNDTRIP_KEYS,
    "peer": ("roundtrips_per_s", "p50_ms", "p99_ms", "p999_ms"),
    "stream": ("tokens_per_s", "floor_tokens_per_s", "ratio_to_floor", "concurrent_streams"),
    "a2a": (
        "in_flight",
        "roundtrips_per_s",
        "ratio_a2a_to_websocket",
        "streams_per_s",
        "streaming_ratio_a2a_to_websocket",
    ),
    "history": (
        "roundtrips_per_s_without_history",
        "roundtrips_per_s_with_history",
        "ratio_with_history",
        "hub_cpu_ratio_with_history",
        "replay_10000_s_sqlite",
        "replay_10000_s_postgresql",
    ),
}


async def run_bench(settings: Settings, scenario: str, duration: float, as_json: bool) -> int:
    """Runs `scenario` (or `all`) and prints its results; returns the exit code."""
    try:
        options = options_from_env(duration, as_json)
    except ValueError as exc:
        print(f"agentcomm bench: {exc}", file=sys.stderr)
        return 2
    return await run_with_options(settings, scenario, options)


async def run_with_options(settings: Settings, scenario: str, options: BenchOptions) -> int:
    """Like run_bench; SIGTERM, like Ctrl+C, stops everything started before it returns."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    terminated = False

    def on_terminate() -> None:
        nonlocal terminated
        terminated = True
        if task is not None:
            task.cancel()

    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGTERM, on_terminate)
    try:
        return await _run_scenarios(settings, scenario, options)
    except asyncio.CancelledError:
        if terminated:
            return 143
        raise
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGTERM)


async def _run_scenarios(settings: Settings, scenario: str, options: BenchOptions) -> int:
    if scenario == "all":
        names = list(SCENARIO_NAMES)
    elif scenario in SCENARIOS:
        names = [scenario]
    else:
        print(
            f"agentcomm bench: unknown scenario {scenario!r}; choose one of "
            f"{', '.join(SCENARIO_NAMES)} or all",
            file=sys.stderr,
        )
        return 2
    if options.duration <= 0:
        print("agentcomm bench: --duration must be positive", file=sys.stderr)
        return 2
    if settings.log_level == "INFO":
        # The harness's own connections would log every connect; the processes it measures
        # log at WARNING too.
        logging.getLogger().setLevel(logging.WARNING)
    raise_fd_limit(65536)
    progress = Progress(enabled=options.progress)
    log_dir = Path(tempfile.mkdtemp(prefix="agentcomm-bench-"))
    failed = False
    results: dict[str, Result] = {}
    try:
        for name in names:
            progress.scenario = name
            context = BenchContext(settings, options, progress, log_dir)
            try:
                # Imported only now: a scenario's heavy parts load only when it runs.
                result = await load_scenario(name)(context)
            except BenchError as exc:
                failed = True
                result = {"scenario": name, "error": str(exc)}
            except Exception as exc:
                # One broken scenario must not cost the others (`all`); the trace goes to
                # stderr, the result says that it failed.
                log.exception("Scenario %s failed", name)
                failed = True
                result = {"scenario": name, "error": f"{type(exc).__name__}: {exc}"}
            if "error" in result:
                # The keys a reader of the JSON looks for are there, empty, beside the reason.
                for key in HEADLINE_KEYS.get(name, ()):
                    result.setdefault(key, None)
            if name == "roundtrip-memory" and "peer" in results:
                _compare_with_peer(result, results["peer"])
            results[name] = result
            progress.scenario = ""
            if options.as_json:
                print(json_line(result), flush=True)
            else:
                print(format_result(result) + "\n", flush=True)
            _save(options, {name: result}, progress, plots=False)
        if options.plots:
            _save(options, results, progress, plots=True)
    finally:
        if failed:
            progress.note(f"logs of the processes: {log_dir}")
        else:
            shutil.rmtree(log_dir, ignore_errors=True)
    return 1 if failed else 0


def _compare_with_peer(result: Result, peer: Result) -> None:
    from agentcomm.bench.stats import ratio, rounded

    peer_rate = peer.get("roundtrips_per_s")
    if not isinstance(peer_rate, int | float):
        return
    result["peer_roundtrips_per_s"] = peer_rate
    value = result.get("roundtrips_per_s")
    result["ratio_to_peer"] = rounded(
        ratio(float(value) if isinstance(value, int | float) else None, float(peer_rate))
    )
    targets = result.setdefault("targets", {})
    r = result["ratio_to_peer"]
    targets["ratio_to_peer>=1.2"] = None if r is None else r >= 1.2


def _save(
    options: BenchOptions, results: dict[str, Result], progress: Progress, *, plots: bool
) -> None:
    from agentcomm.bench.output import save_plots, save_results

    try:
        written = save_plots(options, results) if plots else save_results(options, results)
    except OSError as exc:
        progress.note(f"could not save results: {exc}")
        return
    for path in written:
        progress.note(f"wrote {path}")
