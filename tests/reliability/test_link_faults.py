"""Links cut, black-holed and slowed between every part and RabbitMQ, and between an agent and
the server's gRPC port, in the middle of a stream of chat turns (every part its own process,
each link through its own TcpProxy): nothing lost, nothing answered twice, and every part
carries on by itself once the link is back."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.reliability.harness import ChatLoad
from tests.reliability.stack import Stack, reliability_stack, report_line
from tests.support.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow, pytest.mark.timeout(300)]

TOTAL = 300
# The server's default bound on a graceful stop.
SHUTDOWN_TIMEOUT = 10.0
# Every process proposes this AMQP heartbeat: a silent link is taken for dead after about
# 3 x (heartbeat + 1) seconds (aio-pika's rule).
RABBITMQ_HEARTBEAT = 1
DEAD_LINK_BOUND = 3 * (RABBITMQ_HEARTBEAT + 1) + 2.0
# Longer than a publish waits for its confirm, shorter than the heartbeat bound: the link
# survives, and some TEXTs are refused while the bus has them after all.
BLACKHOLE_SECONDS = 5.5
# Longer than the heartbeat bound: every part takes its link for dead and reconnects.
LONG_BLACKHOLE_SECONDS = 12.0
AGENTS = {"echo-amqp": "amqp", "echo-grpc": "grpc"}


@dataclass
class Linked:
    stack: Stack
    # link name -> the proxy it goes through
    links: dict[str, TcpProxy]

    def each(self, action: str, *args: float) -> None:
        for proxy in self.links.values():
            getattr(proxy, action)(*args)


@pytest.fixture
async def linked(
    rabbitmq_available: None, tmp_path: Path, rabbitmq_fast_path: bool
) -> AsyncIterator[Linked]:
    links = {
        name: await TcpProxy("127.0.0.1", 5672).start()
        for name in ("server-bus", "broker-bus", "agent-bus")
    }
    context = reliability_stack(
        tmp_path,
        server_flags={"--rabbitmq-port": str(links["server-bus"].port)},
        env={"RABBITMQ_HEARTBEAT": str(RABBITMQ_HEARTBEAT)},
        fast_path=rabbitmq_fast_path,
    )
    try:
        # Starting and stopping processes blocks; the proxies must keep forwarding meanwhile.
        stack = await asyncio.to_thread(context.__enter__)
        try:
            links["agent-grpc"] = await TcpProxy("127.0.0.1", stack.server.grpc_port).start()
            await asyncio.to_thread(
                stack.add_broker, "broker-links", {"--rabbitmq-port": str(links["broker-bus"].port)}
            )
            await asyncio.to_thread(
                stack.add_echo,
                "echo-amqp",
                "amqp",
                env={"RABBITMQ_PORT": str(links["agent-bus"].port)},
            )
            await asyncio.to_thread(
                stack.add_echo,
                "echo-grpc",
                "grpc",
                env={"GRPC_PORT": str(links["agent-grpc"].port)},
            )
            yield Linked(stack, links)
        finally:
            # Healed before the processes stop, so that they can say goodbye.
            for proxy in links.values():
                proxy.passthrough()
            await asyncio.to_thread(context.__exit__, None, None, None)
    finally:
        for proxy in links.values():
            await proxy.close()


async def until_not_ready(stack: Stack, bound: float) -> None:
    def ready() -> bool:
        return stack.server.is_ready()

    async with asyncio.timeout(bound):
        while await asyncio.to_thread(ready):  # noqa: ASYNC110  (readiness is only polled)
            await asyncio.sleep(0.1)


async def run_with_fault(linked: Linked, fault: str) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    noticed_after: float | None = None
    async with ChatLoad(linked.stack.ws_url, list(AGENTS), frontends=3, window=6) as load:
        sending = load.start(TOTAL, pace=0.01)
        await load.wait_sent(TOTAL // 3, timeout=60)
        in_flight = load.mark_fault()
        if fault == "reset":
            linked.each("reset")
        elif fault == "blackhole":
            linked.each("blackhole")
            await asyncio.sleep(BLACKHOLE_SECONDS)  # the outage itself
            linked.each("passthrough")
        elif fault == "blackhole_long":
            linked.each("blackhole")
            began = loop.time()
            # The server notices its dead bus link (and says so on /readyz) within the bound.
            await until_not_ready(linked.stack, DEAD_LINK_BOUND)
            noticed_after = loop.time() - began
            await asyncio.sleep(max(0.0, LONG_BLACKHOLE_SECONDS - noticed_after))
            linked.each("passthrough")
        elif fault == "slow":
            linked.each("slow", 0.05)
            await asyncio.sleep(3.0)
            linked.each("passthrough")
        await asyncio.wait_for(sending, timeout=120)
        await load.wait_settled(TOTAL, timeout=120)
        await load.quiet(2.0)
        report = load.report()
        counts = report.counts() | {"fault": fault, "in_flight_at_fault_start": in_flight}
        if noticed_after is not None:
            counts["dead_link_noticed_seconds"] = round(noticed_after, 1)
        report_line(f"link_{fault}", counts)
        assert (len(report.lost), len(report.duplicated), report.unexpected) == (0, 0, []), report
        assert report.replies == TOTAL, report
        return counts


@pytest.mark.parametrize("fault", ["reset", "blackhole", "blackhole_long", "slow"])
async def test_links_cut_or_stalled_mid_stream_lose_and_duplicate_nothing(
    linked: Linked, fault: str
) -> None:
    await run_with_fault(linked, fault)
    await asyncio.to_thread(linked.stack.check_running)
    # Traffic after the fault flows as before, with no refusals.
    async with ChatLoad(
        linked.stack.ws_url, list(AGENTS), frontends=2, text_prefix="after"
    ) as after:
        await after.run(60)
        await after.wait_settled(60, timeout=30)
        report = after.report()
        assert report.replies == 60, report
        assert not report.refusals, report


# The server's gRPC keepalive (server/grpc/server.py): a ping every 10 s, 5 s for the answer; then
# the agent's streams are gone and STREAM_GRACE (1 s here) later the agent is offline.
GRPC_DEAD_LINK_BOUND = 10 + 5 + 1 + 3.0


async def test_dead_grpc_link_is_noticed_within_keepalive_and_the_agent_comes_back(
    linked: Linked,
) -> None:
    stack, link = linked.stack, linked.links["agent-grpc"]
    agent = stack.agents["echo-grpc"]
    loop = asyncio.get_running_loop()
    link.blackhole()
    began = loop.time()
    await asyncio.to_thread(
        stack.server.wait_agents, ["echo-grpc"], online=False, timeout=GRPC_DEAD_LINK_BOUND
    )
    server_noticed = loop.time() - began
    # The agent notices too (its calls time out, its connection's keepalive fails) ...
    await asyncio.to_thread(agent.wait_for_output, "lost the server", timeout=GRPC_DEAD_LINK_BOUND)
    agent_noticed = loop.time() - began
    # ... and once the link is back it comes back by itself.
    link.passthrough()
    await asyncio.to_thread(stack.server.wait_agents, ["echo-grpc"], timeout=30)
    back_after = loop.time() - began - agent_noticed
    async with ChatLoad(stack.ws_url, ["echo-grpc"], frontends=1, text_prefix="back") as load:
        await load.run(20)
        await load.wait_settled(20, timeout=30)
        assert load.report().replies == 20, load.report()
    report_line(
        "grpc_dead_link",
        {
            "server_noticed_seconds": round(server_noticed, 1),
            "agent_noticed_seconds": round(agent_noticed, 1),
            "back_seconds_after_heal": round(back_after, 1),
            "bound_seconds": GRPC_DEAD_LINK_BOUND,
        },
    )


async def test_server_stops_within_its_shutdown_bound_with_a_dead_bus(linked: Linked) -> None:
    """SHUTDOWN_TIMEOUT bounds a graceful stop even when RabbitMQ stopped answering."""
    server = linked.stack.server.process
    linked.links["server-bus"].blackhole()
    loop = asyncio.get_running_loop()
    began = loop.time()
    code = await asyncio.to_thread(server.stop, signal.SIGTERM, SHUTDOWN_TIMEOUT + 10)
    took = loop.time() - began
    report_line("server_stop_with_dead_bus", {"seconds": round(took, 1), "exit": code})
    assert code == 0, server.tail()
    assert took <= SHUTDOWN_TIMEOUT + 2.0, server.tail()


async def test_server_stops_within_its_bound_when_the_bus_stops_answering_unnoticed(
    rabbitmq_available: None, tmp_path: Path, rabbitmq_fast_path: bool
) -> None:
    """As above, with RabbitMQ's link black-holed and the default heartbeat: the link still
    looks alive to the server throughout its stop, so every call to RabbitMQ waits."""
    async with TcpProxy("127.0.0.1", 5672) as bus_link:
        context = reliability_stack(
            tmp_path,
            server_flags={"--rabbitmq-port": str(bus_link.port)},
            fast_path=rabbitmq_fast_path,
        )
        stack = await asyncio.to_thread(context.__enter__)
        try:
            await asyncio.to_thread(stack.add_echo, "echo-grpc", "grpc")
            server = stack.server.process
            bus_link.blackhole()
            loop = asyncio.get_running_loop()
            began = loop.time()
            code = await asyncio.to_thread(server.stop, signal.SIGTERM, SHUTDOWN_TIMEOUT + 30)
            took = loop.time() - began
            report_line("server_stop_with_silent_bus", {"seconds": round(took, 1), "exit": code})
            assert code == 0, server.tail()
            assert took <= SHUTDOWN_TIMEOUT + 2.0, server.tail()
        finally:
            bus_link.passthrough()
            await asyncio.to_thread(context.__exit__, None, None, None)
