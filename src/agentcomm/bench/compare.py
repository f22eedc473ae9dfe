"""Before and after: the results of two benchmark runs side by side, as a table and as PNGs.

`python -m agentcomm.bench.compare BEFORE_DIR AFTER_DIR [--out DIR]` reads the JSON each run
left (one file per scenario, as in `benchmarks/results/`) and prints, for every headline
number, its value in both runs and the target; with matplotlib installed it also draws

- `before-after-<scenario>.png` for `roundtrip` and `roundtrip-memory`: throughput and latency
  against offered load, the hub before and after, beside the floor or the peer of the later
  run, and
- `before-after-targets.png`: every headline number as a share of its target (1.0 = met).

Each run is compared with the floor and the peer of its own run; only those ratios are fair
across runs made minutes or days apart on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Result = dict[str, Any]


@dataclass(frozen=True)
class Headline:
    """One number a target is set for, and how to read it from a scenario's JSON."""

    label: str
    scenario: str
    read: Callable[[Result], float | None]
    target: float
    higher_is_better: bool
    unit: str

    def share_of_target(self, value: float) -> float:
        """1.0 means the target is just met; above 1.0, met with room to spare."""
        if self.higher_is_better:
            return value / self.target
        return self.target / value if value > 0 else float("inf")


def _number(*path: str) -> Callable[[Result], float | None]:
    def read(result: Result) -> float | None:
        value: Any = result
        for key in path:
            if not isinstance(value, dict) or key not in value:
                return None
            value = value[key]
        return float(value) if isinstance(value, int | float) else None

    return read


def _fanout_p99(frontends: int) -> Callable[[Result], float | None]:
    def read(result: Result) -> float | None:
        for size in result.get("sizes") or []:
            if size.get("frontends") == frontends:
                return float(size["last_frontend_p99_ms"])
        return None

    return read


HEADLINES = (
    Headline("roundtrip ratio_to_floor", "roundtrip", _number("ratio_to_floor"), 1.0, True, "x"),
    Headline(
        "roundtrip round trips/s", "roundtrip", _number("roundtrips_per_s"), 800.0, True, "/s"
    ),
    Headline(
        "roundtrip p50 @1 in flight",
        "roundtrip",
        _number("one_in_flight", "hub", "p50_ms"),
        5.0,
        False,
        "ms",
    ),
    Headline(
        "roundtrip-memory ratio_to_peer",
        "roundtrip-memory",
        _number("ratio_to_peer"),
        1.2,
        True,
        "x",
    ),
    Headline("fanout 10,000 p99", "fanout", _fanout_p99(10_000), 250.0, False, "ms"),
    Headline("idle KB per connection", "idle", _number("kb_per_connection"), 40.0, False, "KB"),
    Headline(
        "presence loss p99",
        "presence",
        _number("loss_to_every_frontend_p99_ms"),
        50.0,
        False,
        "ms",
    ),
)


def load_results(folder: Path) -> dict[str, Result]:
    """Every `<scenario>.json` in `folder` (a missing folder has none)."""
    results: dict[str, Result] = {}
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            results[str(data.get("scenario", path.stem))] = data
    memory, peer = results.get("roundtrip-memory"), results.get("peer")
    # Only `all` writes the ratio into roundtrip-memory; a run of the two scenarios one after
    # the other has the same two numbers.
    if memory is not None and peer is not None and memory.get("ratio_to_peer") is None:
        hub, other = memory.get("roundtrips_per_s"), peer.get("roundtrips_per_s")
        if isinstance(hub, int | float) and isinstance(other, int | float) and other > 0:
            memory["ratio_to_peer"] = round(hub / other, 3)
    return results


def headline_rows(
    before: dict[str, Result], after: dict[str, Result]
) -> list[tuple[Headline, float | None, float | None]]:
    rows = []
    for headline in HEADLINES:
        old = before.get(headline.scenario)
        new = after.get(headline.scenario)
        rows.append(
            (
                headline,
                headline.read(old) if old is not None else None,
                headline.read(new) if new is not None else None,
            )
        )
    return rows


def format_table(rows: Sequence[tuple[Headline, float | None, float | None]]) -> str:
    def shown(value: float | None, unit: str) -> str:
        if value is None:
            return "—"
        return f"{value:,.0f} {unit}" if abs(value) >= 100 else f"{value:.3g} {unit}"

    lines = ["| number | before | after | target |", "|---|---:|---:|---:|"]
    for headline, old, new in rows:
        sign = "≥" if headline.higher_is_better else "≤"
        lines.append(
            f"| {headline.label} | {shown(old, headline.unit)} | {shown(new, headline.unit)} "
            f"| {sign} {headline.target:g} {headline.unit} |"
        )
    return "\n".join(lines)


def plot_comparison(
    before: dict[str, Result], after: dict[str, Result], folder: Path
) -> list[Path]:
    """The PNGs described in the module's docs; none without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    from agentcomm.bench.plots import label_load_axes, save

    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for scenario, reference in (("roundtrip", "floor"), ("roundtrip-memory", "peer")):
        old, new = before.get(scenario), after.get(scenario)
        if old is None or new is None:
            continue
        reference_sweep = new.get("open_loop") or []
        if reference == "peer":
            reference_sweep = (after.get("peer") or {}).get("open_loop") or []
        curves = [
            ("hub before", "tab:grey", "hub", old.get("open_loop") or []),
            ("hub after", "tab:blue", "hub", new.get("open_loop") or []),
            (f"{reference} (run of after)", "tab:orange", reference, reference_sweep),
        ]
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
        top = 0.0
        for label, colour, side, sweep in curves:
            points = sorted((p for p in sweep if side in p), key=lambda p: p["offered_per_s"])
            if not points:
                continue
            offered = [p["offered_per_s"] for p in points]
            top = max(top, *offered)
            left.plot(
                offered,
                [p[side]["roundtrips_per_s"] for p in points],
                marker="o",
                color=colour,
                label=label,
            )
            right.plot(
                offered, [p[side]["p99_ms"] for p in points], marker="x", color=colour, label=label
            )
        left.plot([0, top], [0, top], color="black", linewidth=0.6, label="offered")
        label_load_axes(
            left,
            right,
            f"{scenario}: throughput, before and after",
            f"{scenario}: p99 latency, before and after",
            "p99 latency (ms)",
        )
        written.append(save(plt, fig, folder / f"before-after-{scenario}.png"))

    rows = [
        (headline, old, new)
        for headline, old, new in headline_rows(before, after)
        if old is not None and new is not None
    ]
    if rows:
        fig, axis = plt.subplots(figsize=(11, 0.55 * len(rows) + 1.2))
        positions = range(len(rows))
        olds = [headline.share_of_target(old) for headline, old, _ in rows]
        news = [headline.share_of_target(new) for headline, _, new in rows]
        axis.barh([y + 0.2 for y in positions], olds, height=0.4, color="tab:grey", label="before")
        axis.barh([y - 0.2 for y in positions], news, height=0.4, color="tab:blue", label="after")
        axis.axvline(1.0, color="black", linewidth=0.8, label="target")
        axis.set_yticks(list(positions), [headline.label for headline, _, _ in rows])
        axis.invert_yaxis()
        axis.set_xscale("log")
        axis.set_xlabel("share of the target (1 = met; right of the line is better)")
        axis.set_title("Headline numbers against their targets, before and after")
        # Below the axes: the bars reach both sides, so inside it would hide some of them.
        axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3)
        written.append(save(plt, fig, folder / "before-after-targets.png"))
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m agentcomm.bench.compare",
        description="Compare the results of two benchmark runs.",
    )
    parser.add_argument("before", type=Path, help="folder with the earlier run's JSON files")
    parser.add_argument("after", type=Path, help="folder with the later run's JSON files")
    parser.add_argument("--out", type=Path, default=None, help="where to write the PNGs")
    args = parser.parse_args(argv)
    before, after = load_results(args.before), load_results(args.after)
    if not before or not after:
        print("agentcomm bench compare: both folders need result JSON files", file=sys.stderr)
        return 2
    print(format_table(headline_rows(before, after)))
    if args.out is not None:
        for path in plot_comparison(before, after, args.out):
            print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
