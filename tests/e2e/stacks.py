"""The stack the end-to-end scenarios run on, on either bus: a hub, its routing broker(s) and one
line-up of agents in separate processes, talked to by a WebSocket frontend (stack_chat.py).

The scenarios are written once; what differs between the buses is how the parts run, and all of
it is here:

- in-process bus: `agentcomm dev` is the hub, the routing broker and the demo agents echo and
  typist in one process, because no other process can reach that bus. Every other agent takes
  its work over gRPC.
- RabbitMQ: `agentcomm serve`, two `agentcomm broker`s competing for broker_input_queue, and
  every agent its own process, in a vhost of its own. Agents take their work from the bus (AMQP)
  or over gRPC, as the line-up says.

The server runs with short timeouts (AGENT_TIMEOUT, STREAM_GRACE, DELIVERY_TIMEOUT) so that an
agent killed mid-message is handled within seconds. The brokers log at DEBUG: each routing
decision is a line that names the broker and the rule that chose the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, ParamSpec, TypeVar

from agentcomm.sdk.demo_agents import planner_answer, typist_answer
from tests.e2e.agents.worker import reply_text
from tests.e2e.processes import (
    START_TIMEOUT,
    Process,
    Processes,
    Server,
    fresh_vhost,
    rabbitmq_env,
    restart,
    start_broker,
    start_demo_agent,
    start_server,
    start_worker,
    wait_broker_routing,
)

Bus = Literal["memory", "rabbitmq"]
BUSES: tuple[Bus, ...] = ("memory", "rabbitmq")
# "bus": the agent takes its work from the message bus where its process can reach it (RabbitMQ),
# over gRPC otherwise; "grpc": over gRPC on every bus.
Transport = Literal["bus", "grpc"]

AGENT_TIMEOUT = 3.0
STREAM_GRACE = 1.0
DELIVERY_TIMEOUT = 4.0
HEARTBEAT_INTERVAL = 1
# Scheduling slack on a loaded machine, on top of the server's own deadlines.
SLACK = 1.5
# The longest a scenario waits for one call into a process or the HTTP API made off the event
# loop; each of those calls has shorter deadlines of its own.
OFF_LOOP_TIMEOUT = START_TIMEOUT + 15

SERVER_FLAGS = (
    "--agent-timeout",
    str(AGENT_TIMEOUT),
    "--stream-grace",
    str(STREAM_GRACE),
    "--delivery-timeout",
    str(DELIVERY_TIMEOUT),
    "--heartbeat-interval",
    str(HEARTBEAT_INTERVAL),
)
BROKERS = ("broker_e2e_a", "broker_e2e_b")
DEV_BROKER_NAME = "dev-broker"
# "DEBUG agentcomm.broker.service: TEXT <message_id> to <agent_id> (<why>)"
ROUTED_LINE = re.compile(r"agentcomm\.broker\.service: TEXT (\S+) to (\S+) \(([^)]*)\)")


@dataclass(frozen=True)
class Member:
    """An agent of the line-up: `kind` is a demo agent (`agentcomm agent echo|typist`) or
    "worker" (agents/worker.py, capabilities of its own; its replies name it)."""

    kind: Literal["echo", "typist", "planner", "worker"]
    capabilities: Mapping[str, str]
    transport: Transport


LINE_UP: dict[str, Member] = {
    "echo": Member("echo", {"kind": "echo"}, "bus"),
    "typist": Member("typist", {"kind": "typist", "streaming": "true"}, "bus"),
    # Asks echo and typist (calls between agents) and streams back both answers.
    "planner": Member("planner", {"kind": "planner"}, "bus"),
    "remote-echo": Member("echo", {"kind": "echo"}, "grpc"),
    "worker-alpha": Member("worker", {"pool": "e2e", "skill": "alpha", "lang": "python"}, "bus"),
    "worker-beta": Member("worker", {"pool": "e2e", "skill": "beta", "lang": "rust"}, "bus"),
    "worker-gamma": Member("worker", {"pool": "e2e", "skill": "gamma", "lang": "python"}, "grpc"),
}
# What `agentcomm dev` runs in its own process on the in-process bus.
IN_DEV_PROCESS = ("echo", "typist", "planner")


def reply_for(agent_id: str, text: str) -> str:
    """The text an agent of the line-up answers to `text`."""
    kind = LINE_UP[agent_id].kind
    if kind == "echo":
        return f"echo: {text}"
    if kind == "typist":
        return typist_answer(text)
    if kind == "planner":
        return planner_answer(text)
    return reply_text(agent_id, text)


_P = ParamSpec("_P")
_T = TypeVar("_T")


async def off_loop(function: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """Runs one of the synchronous process or HTTP calls in a thread, with a deadline."""
    async with asyncio.timeout(OFF_LOOP_TIMEOUT):
        return await asyncio.to_thread(function, *args, **kwargs)


@dataclass
class Stack:
    """A running stack: the scenarios reach its parts through this, whatever the bus."""

    bus: Bus
    processes: Processes
    server: Server
    # broker id -> the process whose log has its routing decisions (on the in-process bus, the
    # `agentcomm dev` process); the first one is the one that stays in `one_broker()`.
    brokers: dict[str, Process] = field(default_factory=dict)
    # The agents of the line-up that run in processes of their own.
    agents: dict[str, Process] = field(default_factory=dict)

    def transport_of(self, transport: Transport) -> str:
        """How an agent in a process of its own takes its work: "amqp" or "grpc"."""
        return "amqp" if transport == "bus" and self.bus == "rabbitmq" else "grpc"

    def start_demo_agent(
        self, kind: str, agent_id: str, transport: Transport, *, wait: bool = True
    ) -> Process:
        """`agentcomm agent echo|typist` in a process of its own."""
        return start_demo_agent(
            self.processes,
            self.server,
            kind,
            agent_id,
            "--transport",
            self.transport_of(transport),
            wait=wait,
        )

    def start_line_up(self) -> None:
        for agent_id, member in LINE_UP.items():
            if self.bus == "memory" and agent_id in IN_DEV_PROCESS:
                continue
            if member.kind == "worker":
                self.agents[agent_id] = start_worker(
                    self.processes,
                    self.server,
                    agent_id,
                    capabilities=member.capabilities,
                    transport=self.transport_of(member.transport),
                    wait=False,
                )
            else:
                self.agents[agent_id] = self.start_demo_agent(
                    member.kind, agent_id, member.transport, wait=False
                )
        self.server.wait_agents(LINE_UP, alive=self.agents.values())

    @contextlib.contextmanager
    def one_broker(self) -> Iterator[str]:
        """Only the first broker routes meanwhile; the others are stopped (SIGTERM, a clean
        exit) and started again afterwards. Yields the id of the one left."""
        first, *others = self.brokers.items()
        for _, process in others:
            assert process.stop(signal.SIGTERM) == 0, process.tail()
        try:
            yield first[0]
        finally:
            for _, process in others:
                wait_broker_routing(process, after=restart(process))

    def routing_reasons(self, broker_id: str) -> dict[str, str]:
        """message id -> the rule that chose its agent, from the broker's DEBUG log."""
        output = self.brokers[broker_id].output()
        return {match.group(1): match.group(3) for match in ROUTED_LINE.finditer(output)}

    def routed_by(self, text_ids: set[str]) -> dict[str, Counter[str]]:
        """How many times each broker routed each of `text_ids` (from its DEBUG log)."""
        counts: dict[str, Counter[str]] = {}
        for broker_id, process in self.brokers.items():
            counts[broker_id] = Counter(
                match.group(1)
                for match in ROUTED_LINE.finditer(process.output())
                if match.group(1) in text_ids
            )
        return counts


def _start_on_memory(processes: Processes) -> Stack:
    server = start_server(
        processes,
        "dev",
        "dev",
        "--message-bus",
        "memory",
        *SERVER_FLAGS,
        "--log-level",
        "DEBUG",
        expect_agents=IN_DEV_PROCESS,
    )
    # The dev stack names its broker but gives it an id of its own.
    dev_brokers = [
        broker_id
        for broker_id, record in server.brokers().items()
        if record["broker_name"] == DEV_BROKER_NAME
    ]
    assert len(dev_brokers) == 1, server.brokers()
    stack = Stack("memory", processes, server, brokers={dev_brokers[0]: server.process})
    stack.start_line_up()
    return stack


def _start_on_rabbitmq(processes: Processes) -> Stack:
    server = start_server(processes, "server", "serve", *SERVER_FLAGS)
    stack = Stack("rabbitmq", processes, server)
    stack.brokers = {
        broker_id: start_broker(processes, server, broker_id, "--log-level", "DEBUG")
        for broker_id in BROKERS
    }
    stack.start_line_up()
    return stack


@contextlib.contextmanager
def running_stack(bus: Bus, log_dir: Path) -> Iterator[Stack]:
    """The whole stack on `bus`, ended (and checked for unclean exits and tracebacks) after."""
    with contextlib.ExitStack() as resources:
        if bus == "rabbitmq":
            env = rabbitmq_env(resources.enter_context(fresh_vhost()))
        else:
            env = {"MESSAGE_BUS": "memory"}
        processes = Processes(log_dir, env | {"LOG_LEVEL": "INFO"})
        try:
            start = _start_on_rabbitmq if bus == "rabbitmq" else _start_on_memory
            yield start(processes)
        finally:
            problems = processes.close()
    assert not problems, "\n\n".join(problems)
