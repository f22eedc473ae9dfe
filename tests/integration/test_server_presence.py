"""Presence in real time (the timing itself is covered on a manual clock in
tests/unit/test_presence.py): an agent that stops heartbeating goes offline after AGENT_TIMEOUT
and every frontend and status subscriber hears of it at once; one that keeps heartbeating
stays online."""

from __future__ import annotations

import asyncio
import contextlib
import time
from contextlib import AsyncExitStack

from agentcomm.server.testing import running_hub, test_settings
from tests.support.agent import GrpcAgent, GrpcBroker
from tests.support.frontend import PRESENCE, Frontend, of_type

AGENT_TIMEOUT = 1.0


async def heartbeat_forever(agent: GrpcAgent, every: float) -> None:
    while True:
        await asyncio.sleep(every)  # the agent's own pace, not a wait for an event
        await agent.heartbeat("IDLE")


async def test_agent_that_stops_heartbeating_goes_offline_after_agent_timeout() -> None:
    settings = test_settings(agent_timeout=AGENT_TIMEOUT)
    async with AsyncExitStack() as stack:
        hub = await stack.enter_async_context(running_hub(settings))
        frontend = await stack.enter_async_context(await Frontend.registered(hub.ws_url))
        watcher = await stack.enter_async_context(await Frontend.registered(hub.ws_url))
        broker = await stack.enter_async_context(GrpcBroker(hub.grpc_target))
        stream = broker.subscribe()
        assert (await stream.next()).is_full_update is True

        steady = await stack.enter_async_context(GrpcAgent(hub.grpc_target, "steady", session="s"))
        await steady.register("Steady")
        pulse = asyncio.create_task(heartbeat_forever(steady, AGENT_TIMEOUT / 4))
        stack.callback(pulse.cancel)
        quiet = await stack.enter_async_context(GrpcAgent(hub.grpc_target, "quiet", session="q"))
        await quiet.register("Quiet")
        registered_at = time.monotonic()
        await quiet.heartbeat("IDLE")  # one sign of life, then silence

        for watching in (frontend, watcher):
            for agent_id in ("steady", "quiet"):
                online = await watching.next(of_type(PRESENCE, is_full_update=False))
                assert [(a["agent_id"], a["is_online"]) for a in online["agents"]] == [
                    (agent_id, True)
                ]

        offline = await frontend.next(of_type(PRESENCE, is_full_update=False), timeout=5)
        silent_for = time.monotonic() - registered_at
        assert [(a["agent_id"], a["is_online"], a["status"]) for a in offline["agents"]] == [
            ("quiet", False, "offline")
        ]
        # Not before the timeout (and the wait above bounds how long after it).
        assert silent_for >= AGENT_TIMEOUT, silent_for
        same = await watcher.next(of_type(PRESENCE, is_full_update=False))
        assert same["agents"] == offline["agents"]

        statuses = [await stream.next() for _ in range(3)]
        assert [[(i.agent_id, i.is_online) for i in s.agents] for s in statuses] == [
            [("steady", True)],
            [("quiet", True)],
            [("quiet", False)],
        ]

        # Registered at the same moment, the heartbeating agent outlived the timeout: it is
        # still online, with no offline delta for it anywhere.
        assert not pulse.done(), pulse
        assert hub.hub.registry.is_online("steady")
        assert frontend.non_presence(await frontend.barrier()) == []
        assert all(
            agent["agent_id"] != "steady" or agent["is_online"]
            for frame in frontend.take_buffered()
            for agent in frame.get("agents", [])
        )

        # A heartbeat brings the quiet agent back, and everyone hears that too.
        await quiet.heartbeat("IDLE")
        back = await frontend.next(of_type(PRESENCE, is_full_update=False))
        assert [(a["agent_id"], a["is_online"]) for a in back["agents"]] == [("quiet", True)]
        pulse.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            async with asyncio.timeout(5):
                await pulse
