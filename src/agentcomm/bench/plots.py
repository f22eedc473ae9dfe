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
        if name == "cluster" and "round_trips" in result:
            written.append(_plot_cluster(plt, result, folder))
            continue
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


def _plot_cluster(plt: Any, result: Result, folder: Path) -> Path:
    """Same-hub and cross-hub round trips at each in-flight level (left), and each presence
    change's arrival at the frontends of the other hubs (right)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    rows = result["round_trips"]["closed_loop"]
    for side, colour in (("same-hub", "tab:blue"), ("cross-hub", "tab:orange")):
        points = sorted((r for r in rows if side in r), key=lambda r: r["in_flight"])
        left.plot(
            [r["in_flight"] for r in points],
            [r[side]["roundtrips_per_s"] for r in points],
            marker="o",
            color=colour,
            label=side,
        )
    left.set_xlabel("round trips in flight")
    left.set_ylabel("round trips/s")
    left.set_title(f"cluster: cross/same = {result['round_trips']['cross_to_same_ratio']}")
    left.legend()
    presence = result["presence"]
    names = ["each p50", "each p99", "last p50", "last p99"]
    values = [
        presence["each_frontend_p50_ms"],
        presence["each_frontend_p99_ms"],
        presence["last_frontend_p50_ms"],
        presence["last_frontend_p99_ms"],
    ]
    right.bar(names, values, color="tab:green")
    right.axhline(100, color="grey", linewidth=0.8, linestyle="--", label="goal (p99)")
    right.set_ylabel("ms")
    right.set_title(f"presence to {presence['timed_frontends']} frontends on other hubs")
    right.legend()
    return save(plt, fig, folder / "cluster.png")


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
