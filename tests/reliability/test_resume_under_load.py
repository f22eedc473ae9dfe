"""Frontends whose sockets drop in the middle of a stream of turns come back within
RESUME_WINDOW with their frontend_id and resume_token: the same session continues, everything
addressed to them meanwhile arrives once, and no TEXT is answered twice or not at all. Once
they are gone for good, the server forgets them after RESUME_WINDOW: what it keeps per frontend
and per message drains, so memory stays bounded.

The in-process stack (server, broker, echo agent on the in-process bus) is enough here: the
subject is the server's sessions, not the bus.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from agentcomm.dev import DevStack
from agentcomm.server.testing import test_settings
from tests.reliability.harness import ChatLoad
from tests.reliability.stack import report_line
from tests.support.waiting import wait_until

TOTAL = 400
RESUME_WINDOW = 2.0


@pytest.fixture
async def stack() -> AsyncIterator[DevStack]:
    stack = DevStack(
        test_settings(
            rate_limit_per_second=1000, rate_limit_burst=1000, resume_window=RESUME_WINDOW
        )
    )
    await stack.start()
    try:
        yield stack
    finally:
        await stack.stop()


async def test_dropped_frontends_resume_and_get_every_answer_once(stack: DevStack) -> None:
    hub = stack.server.hub
    url = f"ws://127.0.0.1:{stack.server.http_port}/ws"
    async with ChatLoad(url, ["echo"], frontends=4, window=10) as load:
        sending = load.start(TOTAL, pace=0.002)
        for drops, share in enumerate((4, 2), start=1):
            await load.wait_sent(TOTAL // share, timeout=30)
            load.mark_fault()
            load.drop_all()
            resumed = len(load.frontends) * drops
            await wait_until(
                lambda resumed=resumed: load.resumed >= resumed,  # type: ignore[misc]
                timeout=10,
                what="every frontend resumed",
            )
        await asyncio.wait_for(sending, timeout=60)
        await load.wait_settled(TOTAL, timeout=60)
        await load.quiet(0.5)
        report = load.report()
        report_line("frontend_resume", report.counts() | {"resumed": load.resumed})
        assert (len(report.lost), len(report.duplicated), report.unexpected) == (0, 0, []), report
        assert report.replies == TOTAL, report
        assert report.resent >= 0, report
        assert len(hub.sessions.live_links()) == len(load.frontends)

    # Gone for good: after RESUME_WINDOW the server keeps nothing per frontend, and nothing
    # per message is left waiting for an answer.
    await wait_until(
        lambda: (
            hub.sessions.live_count() == 0 and not hub.sessions.expire() and _sessions(hub) == 0
        ),
        timeout=RESUME_WINDOW + 5,
        what="the sessions forgotten",
    )
    assert hub.answers.outstanding_count() == 0


def _sessions(hub: object) -> int:
    sessions = hub.sessions  # type: ignore[attr-defined]
    return len(sessions._sessions)
