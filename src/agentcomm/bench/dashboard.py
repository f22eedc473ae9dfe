"""The panels of deploy/grafana-dashboard.json, drawn with matplotlib from a run's scraped
metrics (bench/scrape.py), with the same queries done by hand: rates of counters and
quantiles of histograms over each scrape interval, as `rate()` and `histogram_quantile()` do.
"""

from __future__ import annotations

import re
from itertools import pairwise
from pathlib import Path
from typing import Any

Series = list[dict[str, Any]]

_LABELS = re.compile(r'(\w+)="([^"]*)"')


def _split(key: str) -> tuple[str, dict[str, str]]:
    name, _, rest = key.partition("{")
    return name, dict(_LABELS.findall(rest))


def _matching(samples: dict[str, float], name: str, **labels: str) -> dict[str, float]:
    found = {}
    for key, value in samples.items():
        key_name, key_labels = _split(key)
        if key_name == name and all(key_labels.get(k) == v for k, v in labels.items()):
            found[key] = value
    return found


def _label_values(series: Series, name: str, label: str) -> list[str]:
    values: set[str] = set()
    for point in series:
        for key in _matching(point["samples"], name):
            value = _split(key)[1].get(label)
            if value is not None:
                values.add(value)
    return sorted(values)


def _rate(series: Series, name: str, **labels: str) -> tuple[list[float], list[float]]:
    """Per-second increase of the sum of the matching counters between scrapes."""
    times, rates = [], []
    for before, after in pairwise(series):
        elapsed = after["t"] - before["t"]
        if elapsed <= 0:
            continue
        now = sum(_matching(after["samples"], name, **labels).values())
        then = sum(_matching(before["samples"], name, **labels).values())
        times.append(after["t"])
        rates.append(max(0.0, now - then) / elapsed)
    return times, rates


def _gauge(series: Series, name: str, **labels: str) -> tuple[list[float], list[float]]:
    times, values = [], []
    for point in series:
        found = _matching(point["samples"], name, **labels)
        if found:
            times.append(point["t"])
            values.append(sum(found.values()))
    return times, values


def _quantile(
    series: Series, name: str, q: float, **labels: str
) -> tuple[list[float], list[float]]:
    """histogram_quantile(q) of the buckets' increase over each scrape interval (seconds)."""
    times, values = [], []
    for before, after in pairwise(series):
        buckets: dict[float, float] = {}
        for key, value in _matching(after["samples"], f"{name}_bucket", **labels).items():
            bound = _split(key)[1]["le"]
            earlier = before["samples"].get(key, 0.0)
            upper = float("inf") if bound == "+Inf" else float(bound)
            buckets[upper] = buckets.get(upper, 0.0) + value - earlier
        ordered = sorted(buckets.items())
        total = ordered[-1][1] if ordered else 0.0
        if total <= 0:
            continue
        rank, lower, below = q * total, 0.0, 0.0
        for upper, count in ordered:
            if count >= rank:
                if upper == float("inf"):
                    estimate = lower
                else:
                    inside = count - below
                    estimate = lower + (upper - lower) * ((rank - below) / inside if inside else 1)
                times.append(after["t"])
                values.append(estimate)
                break
            lower, below = upper, count
    return times, values


def render(series: Series, path: Path, title: str) -> Path | None:
    """Writes the dashboard's panels to `path` (PNG); None when matplotlib is missing or the
    series is too short to take a rate of."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    if len(series) < 3:
        return None
    ms = 1000.0
    first, final = (
        "agentcomm_time_to_first_token_seconds",
        "agentcomm_time_to_final_answer_seconds",
    )
    publish = "agentcomm_bus_publish_seconds"
    publish_queues = _label_values(series, f"{publish}_bucket", "queue")
    depth_queues = _label_values(series, "agentcomm_queue_messages", "queue")
    Line = tuple[str, tuple[list[float], list[float]]]
    panels: list[tuple[str, str, list[Line]]] = [
        ("Answers per second", "/s", [("final answers", _rate(series, f"{final}_count"))]),
        (
            "Time to first token",
            "ms",
            [(f"p{int(q * 100)}", _quantile(series, first, q)) for q in (0.5, 0.99)],
        ),
        (
            "Time to final answer",
            "ms",
            [(f"p{int(q * 100)}", _quantile(series, final, q)) for q in (0.5, 0.99)],
        ),
        (
            "Bus publish latency p99",
            "ms",
            [(q, _quantile(series, publish, 0.99, queue=q)) for q in publish_queues],
        ),
        (
            "Queue depth",
            "messages",
            [(q, _gauge(series, "agentcomm_queue_messages", queue=q)) for q in depth_queues],
        ),
        (
            "Consumers per queue",
            "consumers",
            [(q, _gauge(series, "agentcomm_queue_consumers", queue=q)) for q in depth_queues],
        ),
        (
            "Connected",
            "",
            [
                ("frontends", _gauge(series, "agentcomm_frontends_connected")),
                ("agents", _gauge(series, "agentcomm_agents_connected")),
            ],
        ),
        (
            "Refusals, resumes, slow-client closes",
            "/s",
            [
                ("refusals", _rate(series, "agentcomm_refusals_total")),
                ("resumes", _rate(series, "agentcomm_resumes_total")),
                ("slow closes", _rate(series, "agentcomm_slow_client_closes_total")),
            ],
        ),
    ]
    figure, axes = plt.subplots(4, 2, figsize=(12, 12), sharex=True)
    for axis, (name, unit, lines) in zip(axes.flat, panels, strict=True):
        for label, (times, values) in lines:
            scale = ms if unit == "ms" else 1.0
            axis.plot(times, [v * scale for v in values], label=label)
        axis.set_title(name)
        axis.set_ylabel(unit)
        axis.grid(alpha=0.3)
        if lines:
            axis.legend(fontsize="small", loc="upper right")
    for axis in axes[-1]:
        axis.set_xlabel("seconds into the run")
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path
