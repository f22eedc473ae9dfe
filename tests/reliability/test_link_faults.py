"""Links cut, black-holed and slowed between every part and RabbitMQ, and between an agent and
the server's gRPC port, in the middle of a stream of chat turns (every part its own process,
each link through its own TcpProxy): nothing lost, nothing answered twice, and every part
carries on by itself once the link is back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.reliability.harness import ChatLoad
from tests.reliability.stack import Stack, reliability_stack, report_line
from tests.support.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow, pytest.mark.timeout(300)]

TOTAL = 300
BLACKHOLE_SECONDS = 7.0
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
async def linked(rabbitmq_available: None, tmp_path: Path) -> AsyncIterator[Linked]:
    links = {
        name: await TcpProxy("127.0.0.1", 5672).start()
        for name in ("server-bus", "broker-bus", "agent-bus")
    }
    context = reliability_stack(
        tmp_path, server_flags={"--rabbitmq-port": str(links["server-bus"].port)}
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


async def run_with_fault(linked: Linked, fault: str) -> dict[str, object]:
    async with ChatLoad(linked.stack.ws_url, list(AGENTS), frontends=3, window=6) as load:
        sending = load.start(TOTAL, pace=0.01)
        await load.wait_sent(TOTAL // 3, timeout=60)
        in_flight = load.mark_fault()
        if fault == "reset":
            linked.each("reset")
        elif fault == "blackhole":
            linked.each("blackhole")
            # Longer than a publish waits for its confirm: some TEXTs are refused while the
            # bus has them after all (the link heals below its heartbeat bound).
            await asyncio.sleep(BLACKHOLE_SECONDS)
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
        report_line(f"link_{fault}", counts)
        assert (len(report.lost), len(report.duplicated), report.unexpected) == (0, 0, []), report
        assert report.replies == TOTAL, report
        return counts


@pytest.mark.parametrize("fault", ["reset", "blackhole", "slow"])
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
