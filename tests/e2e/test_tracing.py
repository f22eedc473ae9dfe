"""One TEXT, one trace: the hub, the broker and the agent each in a process of its own export
their spans over OTLP to a receiver this test runs, and the spans of the turn form one tree
under the browser's own span (the `traceparent` in the TEXT's metadata) that covers every hop,
there and back — on both buses and both ways an agent takes its work.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.e2e.processes import (
    Process,
    Processes,
    Server,
    fresh_vhost,
    rabbitmq_env,
    start_broker,
    start_demo_agent,
    start_server,
)
from tests.e2e.stack_chat import Chat
from tests.e2e.stacks import Bus, Transport, off_loop
from tests.support.otlp import OtlpReceiver, ReceivedSpan, otlp_receiver

TRANSPORTS: tuple[Transport, ...] = ("bus", "grpc")
# The echo agent that `agentcomm dev` runs in its own process, on its in-process bus.
DEV_ECHO = "echo"


@dataclass
class TracedStack:
    bus: Bus
    receiver: OtlpReceiver
    server: Server
    agents: dict[Transport, str] = field(default_factory=dict)
    processes: list[Process] = field(default_factory=list)

    @property
    def services(self) -> tuple[str, str]:
        """The service names of the hub and the broker."""
        if self.bus == "memory":
            return ("agentcomm-dev", "agentcomm-dev")
        return ("agentcomm-serve", "agentcomm-broker")


@contextlib.contextmanager
def traced_stack(bus: Bus, log_dir: Path) -> Iterator[TracedStack]:
    with contextlib.ExitStack() as resources:
        receiver = resources.enter_context(otlp_receiver())
        env = (
            rabbitmq_env(resources.enter_context(fresh_vhost()))
            if bus == "rabbitmq"
            else {"MESSAGE_BUS": "memory"}
        )
        processes = Processes(log_dir, env | receiver.env | {"LOG_LEVEL": "INFO"})
        try:
            if bus == "rabbitmq":
                server = start_server(processes, "server", "serve")
                start_broker(processes, server, "broker_traced")
                agents: dict[Transport, str] = {"bus": "echo-amqp", "grpc": "echo-grpc"}
                start_demo_agent(processes, server, "echo", "echo-amqp", "--transport", "amqp")
            else:
                server = start_server(
                    processes, "dev", "dev", "--message-bus", "memory", expect_agents=[DEV_ECHO]
                )
                agents = {"bus": DEV_ECHO, "grpc": "echo-grpc"}
            start_demo_agent(processes, server, "echo", "echo-grpc", "--transport", "grpc")
            yield TracedStack(bus, receiver, server, agents)
        finally:
            problems = processes.close()
    assert not problems, "\n\n".join(problems)


@pytest.fixture(scope="module")
def traced(
    bus: Bus, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TracedStack]:
    if bus == "rabbitmq":
        request.getfixturevalue("rabbitmq_available")
    with traced_stack(bus, tmp_path_factory.mktemp(f"traced-{bus}")) as stack:
        yield stack


def _ancestors(span: ReceivedSpan, by_id: dict[str, ReceivedSpan]) -> list[ReceivedSpan]:
    chain = []
    while span.parent_id in by_id:
        span = by_id[span.parent_id]
        chain.append(span)
    return chain


def _names(spans: list[ReceivedSpan]) -> set[str]:
    return {span.name for span in spans}


def _expected(agent_id: str, transport: Transport, bus: Bus) -> set[str]:
    hops = {
        "receive TEXT",
        "publish broker_input_queue",
        "process broker_input_queue",
        "broker decide",
        "publish server_input_queue",
        "process server_input_queue",
        f"publish agent_queue_{agent_id}",
        "handle TEXT",
    }
    if transport == "grpc":
        # The hub consumes the agent's queue for it and hands the message over its stream;
        # the reply comes back on SendOutputs.
        return hops | {
            f"process agent_queue_{agent_id}",
            f"deliver to agent {agent_id}",
            "receive REPLY from agent",
        }
    return hops | {f"process agent_queue_{agent_id}"}


def _reply_framed(spans: list[ReceivedSpan]) -> bool:
    """A frame went to the frontend (an event on the span that sent it) below the agent's
    handler: the way back is complete."""
    by_id = {span.span_id: span for span in spans}
    return any(
        "send frame" in span.events
        and any(a.name == "handle TEXT" for a in _ancestors(span, by_id))
        for span in spans
    )


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_one_text_is_one_trace_across_every_hop(
    traced: TracedStack, transport: Transport
) -> None:
    agent_id = traced.agents[transport]
    trace_id, browser_span = secrets.token_hex(16), secrets.token_hex(8)
    async with await Chat.open(traced.server.ws_url, f"traced-{transport}") as chat:
        text_id = await chat.send_text(
            "follow me",
            receiver_id=agent_id,
            metadata={"traceparent": f"00-{trace_id}-{browser_span}-01"},
        )
        final = await chat.final(text_id, timeout=15.0)
    assert final["message_type"] == "REPLY", final

    expected = _expected(agent_id, transport, traced.bus)
    spans = await off_loop(
        traced.receiver.wait_for,
        lambda spans: expected <= _names(spans) and _reply_framed(spans),
        trace_id=trace_id,
        timeout=20.0,
        what=f"the spans of {sorted(expected)}",
    )
    listing = "\n".join(str(span) for span in spans)
    by_id = {span.span_id: span for span in spans}

    # One tree: the frame received continues the browser's span, every other span has its
    # parent in this trace.
    roots = [span for span in spans if span.parent_id not in by_id]
    assert [(r.name, r.parent_id) for r in roots] == [("receive TEXT", browser_span)], listing
    (received,) = roots
    assert received.kind == "server"
    assert received.attributes["agentcomm.message.id"] == text_id
    # Its status echoes went to the frontend while it was being handled.
    assert "send frame" in received.events, listing

    # Each hop under the one before it.
    def one(name: str) -> ReceivedSpan:
        found = [span for span in spans if span.name == name]
        assert found, f"no span {name!r}:\n{listing}"
        return found[0]

    handler = one("handle TEXT")
    chain = [span.name for span in _ancestors(handler, by_id)]
    assert chain[-1] == "receive TEXT", listing
    assert f"publish agent_queue_{agent_id}" in chain, listing
    assert "broker decide" not in chain  # a sibling of the publish, not its parent
    assert "process broker_input_queue" in chain, listing
    if transport == "grpc":
        assert chain[0] == f"deliver to agent {agent_id}", listing
    else:
        assert chain[0] == f"process agent_queue_{agent_id}", listing

    # The messaging conventions, on the bus each process is on.
    system = "rabbitmq" if traced.bus == "rabbitmq" else "agentcomm.memory"
    for span in spans:
        if span.name.startswith(("publish ", "process ")):
            assert span.attributes["messaging.system"] == system, span
            assert span.kind == ("producer" if span.name.startswith("publish") else "consumer")
    hub, broker = traced.services
    services = {span.service for span in spans}
    assert {hub, broker} <= services, listing
    if transport == "grpc" or traced.bus == "rabbitmq":
        # The agent in a process of its own exports its own spans.
        assert handler.service == "agentcomm-agent", listing
    assert one("broker decide").service == broker
    assert one("receive TEXT").service == hub
