"""PNG plots of throughput and latency against offered load (matplotlib, when installed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agentcomm.bench.context import Result

COLOURS = {"hub": "tab:blue", "floor": "tab:orange", "peer": "tab:green"}


def plot_results(results: dict[str, Result], folder: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written: list[Path] = []
    folder.mkdir(parents=True, exist_ok=True)
    for name, result in results.items():
        sweep: list[dict[str, Any]] = list(result.get("open_loop") or [])
        if name == "roundtrip-memory" and "peer" in results:
            # The comparison the in-process bus is for: the same round trip through AutoGen.
            sweep += results["peer"].get("open_loop") or []
        if not sweep:
            continue
        sides = [s for s in ("hub", "floor", "peer") if any(s in p for p in sweep)]
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
        for side in sides:
            colour = COLOURS.get(side)
            points = sorted((p for p in sweep if side in p), key=lambda p: p["offered_per_s"])
            offered = [p["offered_per_s"] for p in points]
            achieved = [p[side]["roundtrips_per_s"] for p in points]
            p50 = [p[side]["p50_ms"] for p in points]
            p99 = [p[side]["p99_ms"] for p in points]
            left.plot(offered, achieved, marker="o", color=colour, label=side)
            right.plot(offered, p50, marker="o", color=colour, label=f"{side} p50")
            right.plot(offered, p99, marker="x", linestyle="--", color=colour, label=f"{side} p99")
        top = max(p["offered_per_s"] for p in sweep)
        left.plot([0, top], [0, top], color="grey", linewidth=0.8, label="offered")
        label_load_axes(left, right, f"{name}: throughput", f"{name}: latency", "latency (ms)")
        written.append(save(plt, fig, folder / f"{name}.png"))
    return written


def label_load_axes(
    left: Any, right: Any, left_title: str, right_title: str, latency_label: str
) -> None:
    """Throughput (left) and log-scale latency (right) against offered load."""
    left.set_xlabel("offered round trips/s")
    left.set_ylabel("achieved round trips/s")
    left.set_title(left_title)
    left.legend()
    right.set_xlabel("offered round trips/s")
    right.set_ylabel(latency_label)
    right.set_yscale("log")
    right.set_title(right_title)
    right.legend()


def save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
