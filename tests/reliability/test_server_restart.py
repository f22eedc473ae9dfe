"""The server stopped gracefully (SIGTERM) and started again on the same ports in the middle of a
stream of chat turns, every part its own process: the server exits within its shutdown bound,
brokers and agents find the new one by themselves, frontends reconnect, and every turn ends in
exactly one answer.

The server keeps sessions in memory, so a frontend comes back with a new session; as the
protocol asks of clients (docs/reliability.md), it then sends again, with the same message_id,
every TEXT that has no answer yet.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.processes import restart
from tests.reliability.harness import ChatLoad
from tests.reliability.stack import Stack, reliability_stack, report_line

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow, pytest.mark.timeout(300)]

TOTAL = 600
SHUTDOWN_TIMEOUT = 5.0
AGENTS = {"echo-amqp": "amqp", "echo-grpc": "grpc"}


@pytest.fixture
def stack(rabbitmq_available: None, tmp_path: Path, rabbitmq_fast_path: bool) -> Iterator[Stack]:
    flags = {"--shutdown-timeout": str(SHUTDOWN_TIMEOUT)}
    with reliability_stack(tmp_path, server_flags=flags, fast_path=rabbitmq_fast_path) as stack:
        stack.add_broker("broker-restart")
        for agent_id, transport in AGENTS.items():
            stack.add_echo(agent_id, transport, wait=False)
        stack.server.wait_agents(AGENTS, alive=stack.all())
        yield stack


async def restart_server(stack: Stack) -> tuple[float, float]:
    """SIGTERM, then the same command again; returns (seconds to exit, seconds down)."""
    server = stack.server.process
    began = time.monotonic()
    code = await asyncio.to_thread(server.stop, signal.SIGTERM, SHUTDOWN_TIMEOUT + 5)
    assert code == 0, server.tail()
    stopped = time.monotonic() - began
    # Started from this thread: a child gets SIGKILL when the thread that started it ends.
    restart(server)
    await asyncio.to_thread(stack.wait_ready)
    return stopped, time.monotonic() - began


async def test_graceful_server_restart_under_load_loses_nothing(stack: Stack) -> None:
    async with ChatLoad(stack.ws_url, list(AGENTS), frontends=4, window=8) as load:
        sending = load.start(TOTAL, pace=0.01)
        await load.wait_sent(TOTAL // 3, timeout=60)
        in_flight = load.mark_fault()
        stopped, down = await restart_server(stack)
        await asyncio.to_thread(stack.server.wait_agents, AGENTS, alive=stack.all())
        await asyncio.wait_for(sending, timeout=120)
        await load.wait_settled(TOTAL, timeout=120)
        await load.quiet(2.0)
        report = load.report()
        report_line(
            "server_graceful_restart",
            report.counts()
            | {"shutdown_seconds": round(stopped, 1), "down_seconds": round(down, 1)},
        )
        assert (len(report.lost), len(report.duplicated), report.unexpected) == (0, 0, []), report
        assert report.replies == TOTAL, report
        assert in_flight > 0
        assert report.reconnects >= len(load.frontends)
    await asyncio.to_thread(stack.check_running)
