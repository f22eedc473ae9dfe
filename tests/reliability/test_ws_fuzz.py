"""Fuzzing the WebSocket frame parser of a live hub: arbitrary text and binary frames, JSON of
any shape and envelopes with wrong fields, as the first frame or after registering. The server
answers each with an ERROR or what the frame asked for, or closes the socket with a documented
code; it never closes with 1011 (internal error), never goes silent, and keeps serving others.
FUZZ_EXAMPLES sets how many examples hypothesis tries (default 60; 1,500 were run clean).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator

import httpx
import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentcomm.server.lifecycle.running import RunningServer
from agentcomm.server.testing import test_settings
from tests.support.loop_thread import LoopThread

STEP_TIMEOUT = 10.0
# What the server may close a fuzzed socket with (docs/protocol.md): policy (not registered,
# refused registration), too large, rate limited.
ALLOWED_CLOSE_CODES = {1000, 1008, 1009, 4029}
MESSAGE_TYPES = [
    "TEXT",
    "CANCEL",
    "REPLY",
    "REPLY_CHUNK",
    "ERROR",
    "SYSTEM",
    "REGISTER_FRONTEND",
    "REQUEST_AGENT_STATUS",
    "AGENT_STATUS_UPDATE",
    "nonsense",
]
KEYS = [
    "message_type",
    "message_id",
    "text_payload",
    "receiver_id",
    "sender_id",
    "conversation_id",
    "in_reply_to_message_id",
    "metadata",
    "routing_status",
    "frontend_name",
    "frontend_id",
    "resume_token",
    "capabilities",
    "token",
    "seq",
    "_client_id",
    "_server_id",
    "_hops",
]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
envelope_like = st.dictionaries(
    st.sampled_from(KEYS) | st.text(max_size=10),
    st.sampled_from(MESSAGE_TYPES) | json_values,
    max_size=8,
).map(json.dumps)
frames = st.lists(
    st.one_of(
        st.text(max_size=200),
        st.binary(max_size=200),
        json_values.map(json.dumps),
        envelope_like,
    ),
    min_size=1,
    max_size=6,
)


class Hub:
    def __init__(self, loop: LoopThread, server: RunningServer) -> None:
        self.loop = loop
        self.server = server

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.server.http_port}/ws"


@pytest.fixture(scope="module")
def hub() -> Iterator[Hub]:
    from agentcomm.bus.memory import InMemoryBus

    loop = LoopThread(STEP_TIMEOUT)
    # A small frame limit so that "too large" is reachable; a generous rate limit so that the
    # fuzzer's bursts are parsed, not just throttled.
    server = RunningServer(
        test_settings(max_message_bytes=1024, rate_limit_per_second=1000, rate_limit_burst=1000),
        InMemoryBus(),
    )
    loop.run(server.start(), timeout=30)
    try:
        yield Hub(loop, server)
    finally:
        loop.run(server.stop(), timeout=30)
        loop.close()


async def exchange(url: str, sent: list[str | bytes], *, register: bool) -> int | None:
    """Sends the frames (after registering, if asked) and checks the server still answers;
    returns the close code when the server closed the socket instead."""
    async with websockets.connect(url, open_timeout=STEP_TIMEOUT, close_timeout=2) as ws:
        if register:
            await ws.send(json.dumps({"message_type": "REGISTER_FRONTEND", "frontend_name": "fz"}))
            response = json.loads(await ws.recv())
            assert response["message_type"] == "REGISTER_FRONTEND_RESPONSE", response
            status = json.loads(await ws.recv())  # the agent list that follows a registration
            assert status["message_type"] == "AGENT_STATUS_UPDATE", status
        try:
            for frame in sent:
                await ws.send(frame)
            # The server answers in order: once this is answered, every frame before it was.
            await ws.send(json.dumps({"message_type": "REQUEST_AGENT_STATUS"}))
            async with asyncio.timeout(STEP_TIMEOUT):
                async for raw in ws:
                    assert isinstance(raw, str), raw
                    frame = json.loads(raw)
                    if frame.get("message_type") == "ERROR":
                        assert frame.get("error_code"), frame
                        assert frame.get("text_payload"), frame
                    if frame.get("message_type") == "AGENT_STATUS_UPDATE" and frame.get(
                        "is_full_update"
                    ):
                        return None
        except websockets.ConnectionClosed:
            pass
        code = ws.close_code
        assert code in ALLOWED_CLOSE_CODES, (code, ws.close_reason, sent)
        return code


async def still_serving(url: str, http_port: int) -> None:
    async with httpx.AsyncClient(timeout=STEP_TIMEOUT) as http:
        assert (await http.get(f"http://127.0.0.1:{http_port}/healthz")).status_code == 200
    assert await exchange(url, [], register=True) is None


@settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(sent=frames, register=st.booleans())
def test_arbitrary_frames_get_answers_or_a_documented_close(
    hub: Hub, sent: list[str | bytes], register: bool
) -> None:
    hub.loop.run(exchange(hub.ws_url, sent, register=register))
    hub.loop.run(still_serving(hub.ws_url, hub.server.http_port))
