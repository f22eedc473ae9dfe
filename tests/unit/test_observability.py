"""What the hub tells an operator: answer timings from the ledger, trace fields in JSON logs,
the dashboard's queries against the metrics the hub has, and the panels' arithmetic."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import orjson
import pytest
from opentelemetry.sdk.trace import TracerProvider

from agentcomm.bench.dashboard import _quantile, _rate
from agentcomm.bench.scrape import parse
from agentcomm.core.answers import AnswerLedger
from agentcomm.core.clock import ManualClock
from agentcomm.logging_setup import JsonFormatter
from agentcomm.protocol import Envelope, MessageType
from agentcomm.server.metrics import HubMetrics
from agentcomm.telemetry.spans import Tracing

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana-dashboard.json"


def _text(message_id: str) -> Envelope:
    return Envelope(message_type=MessageType.TEXT, message_id=message_id, text_payload="hi")


def test_the_ledger_times_the_first_word_and_the_final_answer() -> None:
    clock = ManualClock()
    ledger = AnswerLedger(clock, delivery_timeout=300)
    first: list[float] = []
    final: list[float] = []
    ledger.observe_timings(first.append, final.append)

    ledger.await_answer("web-1", _text("streamed"))
    ledger.await_answer("web-1", _text("whole"))
    clock.advance(0.5)
    ledger.heard_of("web-1", "streamed")  # its first chunk
    clock.advance(0.25)
    ledger.heard_of("web-1", "streamed")  # a later chunk is not a first word
    assert ledger.answer("web-1", "whole")
    clock.advance(1.0)
    assert ledger.answer("web-1", "streamed")
    assert not ledger.answer("web-1", "streamed")  # a second final is not timed again

    assert first == [0.5, 0.75]
    assert final == [0.75, 1.75]


def test_a_json_log_line_inside_a_trace_names_the_trace_and_the_message() -> None:
    tracing = Tracing(TracerProvider().get_tracer("test"))
    formatter = JsonFormatter()
    record = logging.LogRecord("agentcomm.x", logging.INFO, __file__, 1, "handled", (), None)
    outside = orjson.loads(formatter.format(record))
    assert "trace_id" not in outside
    assert "message_id" not in outside

    span = tracing.start("process q", attributes={"messaging.message.id": "msg-7"})
    with tracing.current(span):
        inside = orjson.loads(formatter.format(record))
    context = span.get_span_context()
    assert inside["trace_id"] == f"{context.trace_id:032x}"
    assert inside["span_id"] == f"{context.span_id:016x}"
    assert inside["message_id"] == "msg-7"

    record.message_id = "given"
    assert orjson.loads(formatter.format(record))["message_id"] == "given"


def test_every_metric_the_dashboard_queries_is_one_the_hub_exports() -> None:
    exported = set()
    for line in HubMetrics().render().decode().splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            exported.add(name)
            if kind == "counter":
                exported.add(f"{name}_total")
            if kind == "histogram":
                exported |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
    dashboard = json.loads(DASHBOARD.read_text())
    queried = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            queried |= set(re.findall(r"\bagentcomm_\w+", target["expr"]))
    assert queried
    assert queried <= exported, queried - exported


def test_the_panels_take_rates_and_quantiles_as_prometheus_does() -> None:
    def scrape(t: float, count: float, buckets: dict[str, float]) -> dict[str, object]:
        lines = [
            f'agentcomm_time_to_final_answer_seconds_bucket{{le="{le}"}} {value}'
            for le, value in buckets.items()
        ]
        lines.append(f"agentcomm_time_to_final_answer_seconds_count {count}")
        lines.append("agentcomm_time_to_final_answer_seconds_sum 1.0")
        text = "# TYPE agentcomm_time_to_final_answer_seconds histogram\n" + "\n".join(lines)
        return {"t": t, "samples": parse(text + "\n")}

    series = [
        scrape(0.0, 0, {"0.1": 0, "1.0": 0, "+Inf": 0}),
        # 100 answers in 2 s: 50 under 0.1 s, 50 between 0.1 and 1 s.
        scrape(2.0, 100, {"0.1": 50, "1.0": 100, "+Inf": 100}),
    ]
    assert _rate(series, "agentcomm_time_to_final_answer_seconds_count") == ([2.0], [50.0])
    times, p50 = _quantile(series, "agentcomm_time_to_final_answer_seconds", 0.5)
    assert times == [2.0]
    assert p50 == [pytest.approx(0.1)]
    _, p75 = _quantile(series, "agentcomm_time_to_final_answer_seconds", 0.75)
    assert p75 == [pytest.approx(0.55)]
