"""Printing results: one JSON object per scenario line, or a table for people."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import orjson

from agentcomm.bench.context import Result


def json_line(result: Result) -> str:
    return orjson.dumps(result, option=orjson.OPT_NON_STR_KEYS).decode()


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "—"
        text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"
        return text + unit
    if isinstance(value, int):
        return f"{value:,}{unit}"
    return str(value)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    rule = "  ".join("-" * w for w in widths)
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join([line, rule, *body])


def _roundtrip_rows(result: Result) -> list[list[str]]:
    rows: list[list[str]] = []
    sat = result.get("saturation", {})
    one = result.get("one_in_flight", {})
    for side in ("hub", "floor", "peer"):
        s = sat.get(side)
        if not s:
            continue
        o = one.get(side, {})
        rows.append(
            [
                side,
                _fmt(s.get("roundtrips_per_s"), "/s"),
                _fmt(s.get("p50_ms"), " ms"),
                _fmt(s.get("p99_ms"), " ms"),
                _fmt(s.get("p999_ms"), " ms"),
                _fmt(o.get("p50_ms"), " ms"),
                _fmt(o.get("p99_ms"), " ms"),
                _fmt(s.get("errors")),
            ]
        )
    return rows


def _cpu_lines(result: Result) -> list[str]:
    lines = []
    for side, data in result.get("cpu", {}).items():
        per = data.get("ms_per_roundtrip", {})
        busy = data.get("cores_busy", {})
        parts = [f"{k} {_fmt(v)} ms ({_fmt(busy.get(k))} cores)" for k, v in per.items()]
        total = (
            f"; all {_fmt(data.get('total_ms_per_roundtrip'))} ms "
            f"({_fmt(data.get('total_cores_busy'))} cores)"
            if data.get("total_ms_per_roundtrip") is not None
            else ""
        )
        lines.append(f"CPU per round trip, {side}: " + ", ".join(parts) + total)
    return lines


def format_result(result: Result) -> str:
    scenario = result.get("scenario", "?")
    title = f"== {scenario} =="
    if "error" in result:
        return f"{title}\nfailed: {result['error']}"
    lines = [title]
    if scenario in ("roundtrip", "roundtrip-memory", "peer"):
        headers = [
            "",
            "round trips",
            "p50",
            "p99",
            "p99.9",
            "p50 @1",
            "p99 @1",
            "errors",
        ]
        levels = result.get("in_flight_levels") or [result.get("in_flight")]
        lines.append(
            f"closed loop at saturation: the best of {', '.join(map(str, levels))} in flight "
            f"({'peer' if scenario == 'peer' else 'hub'}: {result.get('in_flight')}"
            + (
                f", floor: {result['floor_in_flight']}"
                if result.get("floor_in_flight") is not None
                else ""
            )
            + "); '@1' = one in flight"
        )
        lines.append(_table(headers, _roundtrip_rows(result)))
        per_level = result.get("closed_loop") or []
        if len(levels) > 1 and per_level:
            rows = []
            for point in per_level:
                for side in ("hub", "floor", "floor-serial", "peer"):
                    s = point.get(side)
                    if s:
                        rows.append(
                            [
                                _fmt(point.get("in_flight")),
                                side,
                                _fmt(s.get("roundtrips_per_s"), "/s"),
                                _fmt(s.get("p50_ms"), " ms"),
                                _fmt(s.get("p99_ms"), " ms"),
                            ]
                        )
            lines.append("closed loop by level:")
            lines.append(_table(["in flight", "", "round trips", "p50", "p99"], rows))
        if result.get("ratio_to_floor") is not None:
            lines.append(f"ratio to floor: {_fmt(result['ratio_to_floor'])}")
        if result.get("floor_serial_roundtrips_per_s") is not None:
            lines.append(
                "floor with one delivery at a time per queue: "
                f"{_fmt(result['floor_serial_roundtrips_per_s'], '/s')}"
            )
        inside = result.get("agent_in_process")
        if inside:
            lines.append(
                "with the agent inside the hub process: "
                f"{_fmt(inside.get('roundtrips_per_s'), '/s')}, "
                f"p50 @1 {_fmt(inside.get('one_in_flight', {}).get('p50_ms'), ' ms')}"
            )
        if result.get("ratio_to_peer") is not None:
            lines.append(
                f"ratio to peer: {_fmt(result['ratio_to_peer'])} "
                f"(peer {_fmt(result.get('peer_roundtrips_per_s'), '/s')})"
            )
        lines.extend(_cpu_lines(result))
        sweep = result.get("open_loop")
        if sweep:
            rows = []
            for point in sweep:
                for side in ("hub", "floor", "peer"):
                    s = point.get(side)
                    if s:
                        rows.append(
                            [
                                _fmt(point.get("offered_per_s"), "/s"),
                                side,
                                _fmt(s.get("roundtrips_per_s"), "/s"),
                                _fmt(s.get("p50_ms"), " ms"),
                                _fmt(s.get("p99_ms"), " ms"),
                                _fmt(s.get("errors")),
                            ]
                        )
            lines.append("open loop:")
            lines.append(_table(["offered", "", "achieved", "p50", "p99", "errors"], rows))
    else:
        rows = [
            [key, _fmt(value)]
            for key, value in result.items()
            if key not in ("scenario", "machine", "targets", "notes")
            and not isinstance(value, (dict, list))
        ]
        lines.append(_table(["metric", "value"], rows))
        for key, value in result.items():
            if isinstance(value, list) and value and isinstance(value[0], dict) and key != "notes":
                cols = list(value[0].keys())
                sub = [[_fmt(item.get(c)) for c in cols] for item in value]
                lines.append(f"{key}:")
                lines.append(_table(cols, sub))
        lines.extend(_cpu_lines(result))
    targets = result.get("targets")
    if targets:
        lines.append(
            "targets: " + ", ".join(f"{name} {_fmt(met)}" for name, met in targets.items())
        )
    for note in result.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)
