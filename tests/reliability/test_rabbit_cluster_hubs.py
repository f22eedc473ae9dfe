"""A whole system of hubs on a three-node RabbitMQ cluster loses a node in the middle of 500
chat turns: nothing is lost, nothing answered twice, every process reconnects by itself.

Every part is its own process: two `agentcomm serve` hubs, a broker at each, echo agents spread
over the hubs on both transports (`amqp` works from its own bus connection, `grpc` through its
hub), and frontends that open their sockets on the hubs in turn, so most turns cross from one
hub to another. Every process that talks to the bus has RABBITMQ_HOSTS naming all three nodes
and RABBITMQ_QUEUE_TYPE=quorum. Most of them list the node that is stopped first, so they are
connected to it, and the queues they declared have their leaders there (RabbitMQ puts a quorum
queue's leader on the node of the connection that declared it): stopping it takes both the
links and the leaders away at once. One broker and one agent start on other nodes and keep
their links.

Counted as in the other reliability scenarios (tests/reliability/harness.py): lost, duplicated,
unexpected. Afterwards: every process is the one that was started, each that was on the stopped
node logged its reconnection to another node, the node comes back into the cluster, every hub
lists every agent online, and new turns flow.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import rabbitmq_reachable, require
from tests.e2e.processes import (
    Process,
    Processes,
    Server,
    start_broker,
    start_server,
)
from tests.reliability.harness import ChatLoad
from tests.reliability.stack import EXPECTED_TRACEBACKS, SERVER_FLAGS, report_line
from tests.support.rabbit_cluster import RabbitCluster, rabbit_cluster, rabbitmq_installed

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow, pytest.mark.timeout(900)]

TOTAL = 500
AFTER = 60
# The node stopped in the middle; node 0 is the one the others joined, and stays.
STOPPED = 1
# Each hub's presence report is a lease its peers hold for AGENT_TIMEOUT: longer than a
# reconnection to another node takes on a busy machine, so no agent blinks offline meanwhile.
HUB_FLAGS = SERVER_FLAGS | {"--agent-timeout": "20"}
# agent id -> (transport, hub index, the node its own bus starts on; None: it has no bus)
AGENTS: Mapping[str, tuple[str, int, int | None]] = {
    "echo-amqp-a": ("amqp", 0, STOPPED),
    "echo-amqp-b": ("amqp", 1, 2),
    "echo-grpc-b": ("grpc", 1, None),
}
# broker id -> (hub index, first node)
BROKERS: Mapping[str, tuple[int, int]] = {"broker-a": (0, STOPPED), "broker-b": (1, 0)}
HUBS = 2
RECONNECTED = "Reconnected to RabbitMQ at "


@dataclass
class ClusterStack:
    rabbit: RabbitCluster
    processes: Processes
    hubs: list[Server] = field(default_factory=list)
    # name -> (process, the node its bus started on)
    on_bus: dict[str, tuple[Process, int]] = field(default_factory=dict)
    agents: dict[str, Process] = field(default_factory=dict)

    def hosts(self, first: int) -> str:
        """RABBITMQ_HOSTS with every node, node `first` first."""
        order = [first, *(index for index in range(len(self.rabbit.nodes)) if index != first)]
        return ",".join(self.rabbit.nodes[index].host for index in order)

    def start(self) -> None:
        for index in range(HUBS):
            flags = [*_flags(HUB_FLAGS), "--rabbitmq-hosts", self.hosts(STOPPED)]
            hub = start_server(self.processes, f"hub-{index}", "serve", *flags)
            self.hubs.append(hub)
            self.on_bus[f"hub-{index}"] = (hub.process, STOPPED)
        for broker_id, (hub_index, node) in BROKERS.items():
            flags = ["--rabbitmq-hosts", self.hosts(node)]
            process = start_broker(self.processes, self.hubs[hub_index], broker_id, *flags)
            self.on_bus[broker_id] = (process, node)
        for agent_id, (transport, hub_index, first) in AGENTS.items():
            env = self.hubs[hub_index].grpc_env
            if first is not None:
                env |= {"RABBITMQ_HOSTS": self.hosts(first)}
            process = self.processes.agentcomm(
                agent_id,
                "agent",
                "echo",
                *("--name", agent_id, "--id", agent_id, "--transport", transport),
                env=env,
            )
            self.agents[agent_id] = process
            if first is not None:
                self.on_bus[agent_id] = (process, first)
        self.wait_agents_everywhere()

    def all(self) -> list[Process]:
        return (
            [hub.process for hub in self.hubs]
            + [p for p, _ in self.on_bus.values()]
            + list(self.agents.values())
        )

    def wait_agents_everywhere(self, timeout: float = 60.0) -> None:
        for hub in self.hubs:
            hub.wait_agents(AGENTS, alive=self.all(), timeout=timeout)

    def check_running(self) -> None:
        for process in self.all():
            process.check_running()

    def reconnected(self, offsets: Mapping[str, int]) -> dict[str, bool]:
        """For each process whose bus was on the stopped node: whether it has logged its
        reconnection (to another node) since `offsets`."""
        stopped = self.rabbit.nodes[STOPPED].host
        found = {}
        for name, (process, node) in self.on_bus.items():
            if node != STOPPED:
                continue
            output = process.output()[offsets[name] :]
            lines = [line for line in output.splitlines() if RECONNECTED in line]
            found[name] = any(stopped not in line for line in lines)
        return found

    def ws_urls(self) -> itertools.cycle[str]:
        return itertools.cycle(hub.ws_url for hub in self.hubs)


def _flags(flags: Mapping[str, str]) -> list[str]:
    return [item for key, value in flags.items() for item in (key, value)]


def _base_env(rabbit: RabbitCluster, *, fast_path: bool) -> dict[str, str]:
    first = rabbit.nodes[0]
    return {
        "MESSAGE_BUS": "rabbitmq",
        "RABBITMQ_HOST": "127.0.0.1",
        "RABBITMQ_PORT": str(first.amqp_port),
        "RABBITMQ_VHOST": "/",
        "RABBITMQ_QUEUE_TYPE": "quorum",
        "LOG_LEVEL": "INFO",
        "RABBITMQ_FAST_PATH": "1" if fast_path else "0",
    }


async def test_a_rabbitmq_node_stopped_under_hubs_loses_and_duplicates_nothing(
    rabbitmq_available: None, tmp_path: Path, rabbitmq_fast_path: bool
) -> None:
    require(rabbitmq_installed(), "rabbitmq-server")
    # The extra nodes register with the main node's epmd (see test_infra_rabbit_cluster.py).
    require(rabbitmq_reachable(), "the main RabbitMQ node")
    async with rabbit_cluster(size=3) as rabbit:
        report_line("rabbit_cluster_start", rabbit.timings)
        processes = Processes(
            tmp_path,
            _base_env(rabbit, fast_path=rabbitmq_fast_path),
            known_tracebacks=EXPECTED_TRACEBACKS,
        )
        stack = ClusterStack(rabbit, processes)
        problems: list[str] = []
        try:
            await asyncio.to_thread(stack.start)
            await _scenario(stack)
        finally:
            queues = await rabbit.ctl(
                0, "list_queues", "name", "type", "leader", "online", "messages", "consumers"
            )
            print(f"Queues at the end, as node 0 sees them:\n{queues}", flush=True)
            # The node comes back whatever happened, so that the cluster closes in order.
            if not rabbit.is_running(STOPPED):
                await rabbit.start_node(STOPPED)
            problems = await asyncio.to_thread(processes.close)
    assert not problems, "\n\n".join(problems)


async def _scenario(stack: ClusterStack) -> None:
    rabbit = stack.rabbit
    urls = stack.ws_urls()
    async with ChatLoad(lambda: next(urls), list(AGENTS), frontends=4, window=8) as load:
        sending = load.start(TOTAL, pace=0.1)
        await load.wait_sent(TOTAL // 3, timeout=120)
        offsets = {name: len(process.output()) for name, (process, _) in stack.on_bus.items()}
        in_flight = load.mark_fault()
        began = asyncio.get_running_loop().time()
        await rabbit.stop_node(STOPPED)
        stopped_in = asyncio.get_running_loop().time() - began
        await asyncio.wait_for(sending, timeout=300)
        await load.wait_settled(TOTAL, timeout=300)
        await load.quiet(2.0)
        report = load.report()
        reconnected = stack.reconnected(offsets)
        report_line(
            "rabbit_cluster_hubs",
            report.counts()
            | {"node_stopped_in_seconds": round(stopped_in, 1), "reconnected": reconnected},
        )
        assert (len(report.lost), len(report.duplicated), report.unexpected) == (0, 0, []), report
        assert report.replies == TOTAL, report
        assert in_flight > 0

    # Every process is still the one that was started; each that was on the stopped node is on
    # another now, by itself.
    await asyncio.to_thread(stack.check_running)
    assert reconnected, "no process was on the stopped node"
    assert all(reconnected.values()), reconnected

    # The node rejoins; presence is right on every hub and new turns flow.
    await rabbit.start_node(STOPPED)
    assert await rabbit.running_nodes() == sorted(rabbit.names)
    await asyncio.to_thread(stack.wait_agents_everywhere)
    async with ChatLoad(
        lambda: next(urls), list(AGENTS), frontends=2, text_prefix="after"
    ) as after:
        await after.run(AFTER)
        await after.wait_settled(AFTER, timeout=60)
        report = after.report()
        assert report.replies == AFTER, report
        assert not report.refusals, report
