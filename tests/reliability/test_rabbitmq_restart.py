"""RabbitMQ stops and starts again in the middle of 1,000 chat turns from several frontends to
several agents (every part its own process): nothing is lost, nothing answered twice, every
process reconnects by itself and traffic after the restart flows as before."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.harness import ChatLoad
from tests.reliability.stack import (
    Stack,
    reliability_stack,
    report_line,
    restart_rabbitmq,
)

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow, pytest.mark.timeout(300)]

TOTAL = 1000
AFTER = 100
AGENTS = {"echo-amqp-1": "amqp", "echo-amqp-2": "amqp", "echo-grpc": "grpc"}


@pytest.fixture
def stack(rabbitmq_available: None, tmp_path: Path, rabbitmq_fast_path: bool) -> Iterator[Stack]:
    with reliability_stack(tmp_path, fast_path=rabbitmq_fast_path) as stack:
        stack.add_broker("broker-restart-1")
        stack.add_broker("broker-restart-2")
        for agent_id, transport in AGENTS.items():
            stack.add_echo(agent_id, transport, wait=False)
        stack.server.wait_agents(AGENTS, alive=stack.all())
        yield stack


async def test_rabbitmq_restart_mid_stream_loses_and_duplicates_nothing(stack: Stack) -> None:
    async with ChatLoad(stack.ws_url, list(AGENTS), frontends=5, window=10) as load:
        sending = load.start(TOTAL, pace=0.01)
        await load.wait_sent(TOTAL // 3, timeout=60)
        in_flight = load.mark_fault()
        outage = await asyncio.to_thread(restart_rabbitmq)
        await asyncio.wait_for(sending, timeout=120)
        await load.wait_settled(TOTAL, timeout=120)
        await load.quiet(2.0)
        report = load.report()
        report_line("rabbitmq_restart", report.counts() | {"outage_seconds": round(outage, 1)})
        assert (len(report.lost), len(report.duplicated), report.unexpected) == (0, 0, []), report
        assert report.replies == TOTAL, report
        assert in_flight > 0

    # Every process is still the one that was started: each reconnected by itself.
    await asyncio.to_thread(stack.check_running)
    await asyncio.to_thread(stack.wait_ready)
    async with ChatLoad(stack.ws_url, list(AGENTS), frontends=2, text_prefix="after") as after:
        await after.run(AFTER)
        await after.wait_settled(AFTER, timeout=30)
        report = after.report()
        assert report.replies == AFTER, report
        assert not report.refusals, report
