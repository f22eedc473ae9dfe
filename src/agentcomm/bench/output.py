"""Results and plots on disk: benchmarks/results/<scenario>.json and PNGs for the docs."""

from __future__ import annotations

from pathlib import Path

from agentcomm.bench.context import Result
from agentcomm.bench.options import BenchOptions
from agentcomm.bench.report import json_line


def plots_dir(options: BenchOptions) -> Path:
    results = options.results_dir
    repo_docs = results.parent.parent / "docs" / "benchmarks"
    if results.parent.name == "benchmarks" and repo_docs.parent.is_dir():
        return repo_docs
    return results


def save_results(options: BenchOptions, results: dict[str, Result]) -> list[Path]:
    written: list[Path] = []
    folder = options.results_dir
    folder.mkdir(parents=True, exist_ok=True)
    for name, result in results.items():
        if "error" in result:
            continue
        path = folder / f"{name}.json"
        path.write_text(json_line(result) + "\n")
        written.append(path)
    return written


def save_plots(options: BenchOptions, results: dict[str, Result]) -> list[Path]:
    from agentcomm.bench.plots import plot_results

    return plot_results(results, plots_dir(options))
