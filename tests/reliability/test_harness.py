"""The counting load on the in-process stack: every TEXT answered exactly once, and the counts
notice a lost, a duplicated and an unexpected answer when there is one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from agentcomm.dev import DevStack
from agentcomm.server.testing import test_settings
from tests.reliability.harness import ChatLoad, Turn

TOTAL = 200


@pytest.fixture
async def dev_stack() -> AsyncIterator[DevStack]:
    stack = DevStack(test_settings(rate_limit_per_second=1000, rate_limit_burst=1000))
    await stack.start()
    try:
        yield stack
    finally:
        await stack.stop()


async def test_every_turn_is_answered_once(dev_stack: DevStack) -> None:
    ws_url = f"ws://127.0.0.1:{dev_stack.server.http_port}/ws"
    async with ChatLoad(ws_url, ["echo"], frontends=4) as load:
        await load.run(TOTAL)
        await load.wait_settled(TOTAL, timeout=30)
        await load.quiet(0.2)
        report = load.report()
    assert not report.errors, report
    assert (len(report.lost), len(report.duplicated), len(report.unexpected)) == (0, 0, 0), report
    assert report.replies == TOTAL
    assert report.accepted == TOTAL


async def test_counts_lost_duplicated_and_unexpected() -> None:
    load = ChatLoad("ws://unused", ["echo"], frontends=1)
    frontend = load.frontends[0]
    load._outstanding[frontend.name] = asyncio.Semaphore(10)
    for number in range(3):
        turn_id = f"t{number}"
        load.turns[turn_id] = Turn(turn_id, frontend.name, "echo", f"turn {number}")

    def reply(to: str, text: str) -> dict[str, str]:
        return {"message_type": "REPLY", "in_reply_to_message_id": to, "text_payload": text}

    load.on_frame(frontend, reply("t0", "echo: turn 0"))
    load.on_frame(frontend, reply("t1", "echo: turn 1"))
    load.on_frame(frontend, {"message_type": "ERROR", "in_reply_to_message_id": "t1"})
    load.on_frame(frontend, reply("nobody", "echo: ?"))
    report = load.report()
    assert report.lost == ["t2"]
    assert report.duplicated == ["t1"]
    assert len(report.unexpected) == 1
