"""Abusive and absent frontends: a flood is rate-limited then cut off (4029), a socket that
stops reading is closed (4008), and a frontend that comes back within RESUME_WINDOW gets what
was addressed to it meanwhile, in order, once. Other frontends are untouched throughout."""

from __future__ import annotations

import asyncio
import json

import websockets

from agentcomm.protocol.codec import encode_for_bus
from agentcomm.protocol.models import Envelope
from agentcomm.protocol.queues import SERVER_INPUT_QUEUE
from agentcomm.protocol.vocabulary import MessageType, RoutingStatus
from agentcomm.server.testing import running_hub, test_settings
from agentcomm.server.ws.connection import INBOUND_QUEUE_FRAMES
from tests.support.agent import GrpcAgent
from tests.support.frontend import Frontend, of_type
from tests.support.waiting import wait_until

TIMEOUT = 15.0


async def test_flooding_frontend_is_rate_limited_then_closed_4029() -> None:
    settings = test_settings(rate_limit_per_second=5, rate_limit_burst=5)
    async with (
        running_hub(settings) as hub,
        await Frontend.registered(hub.ws_url, "flood") as flood,
        await Frontend.registered(hub.ws_url, "calm") as calm,
    ):
        for index in range(200):
            if flood.is_closed:
                break
            try:
                await flood.send(
                    {"message_type": "REQUEST_AGENT_STATUS", "message_id": f"f{index}"}
                )
            except websockets.ConnectionClosed:
                break
        limited = await flood.next(of_type("ERROR", error_code="rate_limited"), timeout=TIMEOUT)
        assert limited["in_reply_to_message_id"].startswith("f")
        assert await flood.wait_closed(timeout=TIMEOUT) == 4029
        # The calm frontend still gets its answers.
        assert await calm.barrier(timeout=TIMEOUT) is not None
        assert not calm.is_closed


async def test_frontend_that_stops_reading_is_closed_4008() -> None:
    settings = test_settings(outbound_queue_frames=16, agent_timeout=600)
    async with (
        running_hub(settings) as hub,
        websockets.connect(hub.ws_url, max_queue=1, max_size=None, compression=None) as stalled,
    ):
        await stalled.send(
            json.dumps({"message_type": "REGISTER_FRONTEND", "frontend_name": "stalled"})
        )
        calm = await Frontend.registered(hub.ws_url, "calm")
        big = {f"capability_{i}": "x" * 1000 for i in range(60)}
        async with GrpcAgent(hub.grpc_target, "chatty", session="chatty") as agent:
            await agent.register("chatty", capabilities=big)
            # Every status change is a ~60 KB delta to every socket (uncompressed: the
            # stalled client refuses permessage-deflate); it never reads, so the kernel's
            # buffers fill, then the server's queue, and the server must let it go.
            for index in range(3000):
                await agent.heartbeat("BUSY" if index % 2 == 0 else "IDLE")
                if hub.hub.sessions.live_count() < 2:
                    break
            await wait_until(
                lambda: hub.hub.sessions.live_count() < 2,
                timeout=TIMEOUT,
                what="the server to let the stalled frontend go",
            )
        assert not calm.is_closed
        await calm.barrier(timeout=TIMEOUT)
        await calm.close()
        # Reading again, the stalled client finds its connection over: with 4008 when the
        # close frame still fit in its buffers, else dropped (1006).
        try:
            async with asyncio.timeout(TIMEOUT):
                async for _ in stalled:
                    pass
        except websockets.ConnectionClosed:
            pass
        assert stalled.close_code in (4008, 1006)


async def test_resumed_frontend_gets_what_it_missed_in_order_once() -> None:
    async with running_hub(test_settings(resume_window=30)) as hub:
        first = await Frontend.registered(hub.ws_url, "leaving")
        assert first.registration is not None
        frontend_id = first.frontend_id
        resume_token = first.registration["resume_token"]
        await first.close()
        await wait_until(lambda: hub.hub.sessions.live_count() == 0, timeout=TIMEOUT)
        for seq in range(3):
            await hub.bus.publish(
                SERVER_INPUT_QUEUE,
                encode_for_bus(
                    Envelope(
                        message_type=MessageType.REPLY,
                        message_id=f"missed-{seq}",
                        sender_id="agent-x",
                        receiver_id=frontend_id,
                        text_payload=f"while you were away {seq}",
                        in_reply_to_message_id=f"question-{seq}",
                        routing_status=RoutingStatus.ROUTED,
                    )
                ),
                message_id=f"missed-{seq}",
            )
        session = hub.hub.sessions.get(frontend_id or "")
        assert session is not None
        await wait_until(lambda: len(session.backlog) == 3, timeout=TIMEOUT)
        again = await Frontend.connect(hub.ws_url)
        await again.send(
            {
                "message_type": "REGISTER_FRONTEND",
                "frontend_name": "back",
                "frontend_id": frontend_id,
                "resume_token": resume_token,
            }
        )
        response = await again.next(timeout=TIMEOUT)
        assert response["message_type"] == "REGISTER_FRONTEND_RESPONSE"
        assert response["frontend_id"] == frontend_id
        replies = [await again.next(of_type("REPLY"), timeout=TIMEOUT) for _ in range(3)]
        assert [reply["message_id"] for reply in replies] == ["missed-0", "missed-1", "missed-2"]
        assert again.non_presence(await again.barrier(timeout=TIMEOUT)) == []
        await again.close()


async def test_wrong_resume_token_gets_a_new_session() -> None:
    async with running_hub() as hub:
        first = await Frontend.registered(hub.ws_url, "one")
        await first.close()
        other = await Frontend.connect(hub.ws_url)
        await other.send(
            {
                "message_type": "REGISTER_FRONTEND",
                "frontend_name": "thief",
                "frontend_id": first.frontend_id,
                "resume_token": "guessed",
            }
        )
        response = await other.next(timeout=TIMEOUT)
        assert response["frontend_id"] != first.frontend_id
        await other.close()


async def test_frames_past_the_inbound_queue_wait_and_are_all_handled_in_order() -> None:
    # Far more frames in one burst than the hub queues per socket: reading pauses while they
    # wait and resumes as they are handled, so none is lost and none is answered out of turn.
    burst = 3 * INBOUND_QUEUE_FRAMES
    settings = test_settings(rate_limit_per_second=100_000, rate_limit_burst=10 * burst)
    async with (
        running_hub(settings) as hub,
        await Frontend.registered(hub.ws_url, "burst") as frontend,
    ):
        frontend.take_buffered()
        for index in range(burst):
            await frontend.send({"message_type": "TEXT", "message_id": f"b{index}"})
        refused = [await frontend.next(of_type("ERROR"), timeout=TIMEOUT) for _ in range(burst)]
        # A TEXT without text is refused by the router: one refusal per frame, in order.
        assert [error["in_reply_to_message_id"] for error in refused] == [
            f"b{index}" for index in range(burst)
        ]
        assert await frontend.barrier(timeout=TIMEOUT) is not None
