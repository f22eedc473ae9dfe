"""Tracing: when it is on, the trace context it reads and writes, the spans of the traced bus,
and an agent author's spans nesting under the SDK's handler span."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agentcomm.bus.base import Delivery
from agentcomm.bus.memory import InMemoryBus
from agentcomm.protocol import Envelope, MessageType, RoutingStatus
from agentcomm.sdk.dispatcher import Dispatcher
from agentcomm.sdk.message import Message
from agentcomm.telemetry import tracing_configured
from agentcomm.telemetry.bus import TracedBus
from agentcomm.telemetry.context import format_traceparent, parse_traceparent
from agentcomm.telemetry.spans import Tracing

WAIT = 5.0
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "hub"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_tracing_is_on_only_when_the_otel_variables_ask_for_it(
    environ: dict[str, str], on: bool
) -> None:
    assert tracing_configured(environ) is on


def test_without_otel_variables_nothing_is_wrapped_and_the_sdk_is_not_loaded() -> None:
    script = textwrap.dedent(
        """
        import os, sys
        for name in list(os.environ):
            if name.startswith("OTEL_"):
                del os.environ[name]
        from agentcomm.bus.factory import create_bus
        from agentcomm.bus.memory import InMemoryBus
        from agentcomm.config import Settings
        from agentcomm.server.lifecycle.hub import Hub
        from agentcomm.server.routing import RouteRunner
        settings = Settings(message_bus="memory")
        bus = create_bus(settings)
        hub = Hub(settings, bus)
        assert type(bus) is InMemoryBus, type(bus)
        assert type(hub.router) is RouteRunner, type(hub.router)
        heavy = ("opentelemetry.sdk", "agentcomm.telemetry.spans", "agentcomm.telemetry.bus")
        loaded = [m for m in sys.modules if m.startswith(heavy)]
        assert not loaded, loaded
        print("untouched")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "untouched"


def test_with_an_otlp_endpoint_the_bus_and_router_are_traced() -> None:
    script = textwrap.dedent(
        """
        import os
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = "http://127.0.0.1:9"
        from agentcomm.bus.factory import create_bus
        from agentcomm.config import Settings
        from agentcomm.server.lifecycle.hub import Hub
        from agentcomm.server.tracing import TracedRouteRunner
        from agentcomm.sdk.transports import bus_transport
        from agentcomm.telemetry import start_tracing
        from agentcomm.telemetry.bus import TracedBus
        handle = start_tracing("agentcomm-test")
        assert handle is not None
        settings = Settings(message_bus="memory")
        bus = create_bus(settings)
        hub = Hub(settings, bus)
        assert type(bus) is TracedBus, type(bus)
        assert type(hub.router) is TracedRouteRunner, type(hub.router)
        assert bus_transport(bus) == "memory"
        handle.shutdown()
        print("traced")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "traced"


def test_a_traceparent_is_read_back_as_it_was_written() -> None:
    parent = parse_traceparent(TRACEPARENT)
    assert parent is not None
    span_context = trace.get_current_span(parent).get_span_context()
    assert span_context.is_remote
    assert span_context.trace_id == 0x0AF7651916CD43DD8448EB211C80319C
    assert format_traceparent(span_context) == TRACEPARENT


@pytest.mark.parametrize(
    "value",
    [
        "",
        None,
        42,
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",  # no flags
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # forbidden version
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",  # zero trace id
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  # zero span id
        "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",  # upper case
        "00-0x f7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    ],
)
def test_a_bad_traceparent_is_ignored(value: object) -> None:
    assert parse_traceparent(value) is None


@given(st.one_of(st.text(max_size=80), st.binary(max_size=80)))
def test_any_outside_value_parses_or_is_ignored_without_raising(value: str | bytes) -> None:
    parent = parse_traceparent(value)
    if parent is not None:
        span_context = trace.get_current_span(parent).get_span_context()
        assert span_context.is_valid


@given(st.integers(1, 2**128 - 1), st.integers(1, 2**64 - 1), st.booleans())
def test_every_valid_context_survives_the_trip(trace_id: int, span_id: int, sampled: bool) -> None:
    value = f"00-{trace_id:032x}-{span_id:016x}-{int(sampled):02x}"
    parent = parse_traceparent(value)
    assert parent is not None
    assert format_traceparent(trace.get_current_span(parent).get_span_context()) == value


@pytest.fixture
def exported() -> Iterator[tuple[Tracing, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield Tracing(provider.get_tracer("test")), exporter
    provider.shutdown()


def _by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {span.name: span for span in spans}


async def test_the_traced_bus_carries_the_context_from_publish_to_consume(
    exported: tuple[Tracing, InMemorySpanExporter],
) -> None:
    tracing, exporter = exported
    bus = TracedBus(InMemoryBus(), tracing, system="agentcomm.memory")
    await bus.connect()
    await bus.declare_queue("work")
    await bus.declare_queue("next")
    handled: asyncio.Queue[Delivery] = asyncio.Queue()

    async def work(delivery: Delivery) -> None:
        # What a handler publishes nests under its delivery's span.
        await bus.publish("next", delivery.body, message_id="onward")

    await bus.consume("work", work)
    await bus.consume("next", handled.put)
    # Outside any trace: passed through, no span, no header.
    await bus.publish("next", b"{}", message_id="untraced")
    untraced = await asyncio.wait_for(handled.get(), WAIT)
    assert untraced.headers is None

    root = tracing.start("turn", "server")
    with tracing.current(root):
        await bus.publish("work", b"{}", message_id="m1")
    onward = await asyncio.wait_for(handled.get(), WAIT)
    await bus.close()

    spans = _by_name(exporter.get_finished_spans())
    assert set(spans) == {"turn", "publish work", "process work", "publish next", "process next"}
    assert spans["publish work"].parent is not None
    assert spans["publish work"].parent.span_id == root.get_span_context().span_id
    assert spans["process work"].parent.span_id == spans["publish work"].context.span_id  # type: ignore[union-attr]
    assert spans["publish next"].parent.span_id == spans["process work"].context.span_id  # type: ignore[union-attr]
    assert spans["process next"].parent.span_id == spans["publish next"].context.span_id  # type: ignore[union-attr]
    assert spans["publish work"].kind is trace.SpanKind.PRODUCER
    assert spans["process work"].kind is trace.SpanKind.CONSUMER
    attributes = spans["publish work"].attributes or {}
    assert attributes["messaging.system"] == "agentcomm.memory"
    assert attributes["messaging.destination.name"] == "work"
    assert attributes["messaging.message.id"] == "m1"
    assert onward.headers is not None
    assert onward.headers["traceparent"] == format_traceparent(spans["publish next"].context)


async def test_an_authors_spans_nest_under_the_sdk_handler_span(
    exported: tuple[Tracing, InMemorySpanExporter],
) -> None:
    tracing, exporter = exported
    author = tracing.tracer  # any tracer: nesting goes by the current context
    sent: list[Envelope] = []

    async def handler(message: Message) -> str:
        with author.start_as_current_span("author's own work"):
            return f"echo: {message.text}"

    async def publish(envelope: Envelope) -> None:
        sent.append(envelope)

    dispatcher = Dispatcher(handler, publish, agent_id="agent1", tracing=tracing)
    envelope = Envelope(
        message_type=MessageType.TEXT,
        message_id="m1",
        sender_id="web_abc",
        receiver_id="agent1",
        text_payload="hi",
        routing_status=RoutingStatus.DELIVERED,
    )
    with tracing.continuing(TRACEPARENT):
        await asyncio.wait_for(dispatcher.handle(envelope), WAIT)

    assert [e.text_payload for e in sent] == ["echo: hi"]
    spans = _by_name(exporter.get_finished_spans())
    handle, own = spans["handle TEXT"], spans["author's own work"]
    assert own.parent is not None
    assert own.parent.span_id == handle.context.span_id
    assert handle.parent is not None
    assert format_traceparent(handle.parent) == TRACEPARENT
    assert (handle.attributes or {})["agentcomm.message.id"] == "m1"
