"""Bad input on the frontend WebSocket: every rejected frame gets its documented ERROR (or
close code), the offending socket survives where the contract says so, nothing reaches the
broker, and a healthy frontend connected at the same time keeps getting its traffic."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from agentcomm.server.testing import HubEndpoints, running_hub, test_settings
from tests.support.bus import BROKER_INPUT_QUEUE, QueueTap, tap
from tests.support.frontend import Frontend

MAX_BYTES = 2048
_ids = itertools.count()


@dataclass
class Scene:
    hub: HubEndpoints
    broker_in: QueueTap
    healthy: Frontend
    stack: AsyncExitStack

    async def frontend(self, *, register: bool = True) -> Frontend:
        if register:
            return await self.stack.enter_async_context(
                await Frontend.registered(self.hub.ws_url, "Mallory")
            )
        return await self.stack.enter_async_context(await Frontend.connect(self.hub.ws_url))

    async def assert_healthy_unaffected(self) -> None:
        """The healthy frontend's TEXT reaches the broker (first in line: nothing of the bad
        input got there before it) and its sender gets the pending echo."""
        message_id = f"healthy-{next(_ids)}"
        await self.healthy.send_text("still here", message_id=message_id)
        message = await self.broker_in.next()
        assert message["message_id"] == message_id
        assert message["sender_id"] == self.healthy.frontend_id
        echo = await self.healthy.next_chat()
        assert (echo["message_id"], echo["routing_status"]) == (message_id, "pending")
        assert self.healthy.non_presence(await self.healthy.barrier()) == []


# One hub for the module (each test brings its own sockets): starting a hub per case would
# spend most of the suite's time on starting and stopping servers.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def shared_hub() -> AsyncIterator[HubEndpoints]:
    # A rate limit high enough that the bursts of bad frames below are answered one by one
    # (rate limiting has tests of its own).
    settings = test_settings(
        max_message_bytes=MAX_BYTES,
        registration_timeout=5.0,
        rate_limit_per_second=1000,
        rate_limit_burst=1000,
    )
    async with running_hub(settings) as hub:
        yield hub


@pytest_asyncio.fixture(loop_scope="module")
async def scene(shared_hub: HubEndpoints) -> AsyncIterator[Scene]:
    async with AsyncExitStack() as stack:
        broker_in = await stack.enter_async_context(tap(shared_hub.bus, BROKER_INPUT_QUEUE))
        healthy = await stack.enter_async_context(
            await Frontend.registered(shared_hub.ws_url, "Healthy")
        )
        yield Scene(shared_hub, broker_in, healthy, stack)
        # Nothing of this test is left on the broker's queue for the next one.
        assert broker_in.pending() == []


def assert_error(frame: dict[str, Any], code: str, in_reply_to: str | None = None) -> None:
    assert frame["message_type"] == "ERROR", frame
    assert frame["error_code"] == code, frame
    assert isinstance(frame["text_payload"], str), frame
    assert frame["text_payload"], frame
    assert frame.get("in_reply_to_message_id") == in_reply_to, frame


# -- after registration: an ERROR, and the socket stays usable ---------------------------------

NOT_FOR_FRONTENDS = [
    "REPLY",
    "REPLY_CHUNK",
    "SYSTEM",
    "ERROR",
    "REGISTER_FRONTEND_RESPONSE",
    "AGENT_STATUS_UPDATE",
    "SERVER_AVAILABLE",
    "SERVER_UNAVAILABLE",
    "REGISTER_BROKER",
    "CLIENT_DISCONNECTED",
]

BAD_MESSAGE_IDS = ["has space", "x" * 129, "", 42, "ünïcode", None]


def nested(depth: int) -> dict[str, Any]:
    """Metadata `depth` levels deep, in few bytes: an object around nested lists."""
    value: list[Any] = [1]
    for _ in range(depth - 2):
        value = [value]
    return {"a": value}


# Metadata deeper than the limit; the second is what used to pass the edge and fail every
# broker that took it.
NESTED_300 = nested(300)
NESTED_254 = nested(254)


def echoed_id(bad_id: object) -> str | None:
    """A refused frame's message_id comes back in in_reply_to_message_id when it is a string
    of a sane length, so that the sender can tell which frame was refused."""
    return bad_id if isinstance(bad_id, str) and 0 < len(bad_id) <= 128 else None


BAD_FRAMES: list[tuple[str, str | bytes | dict[str, Any], str, str | None]] = [
    # (case id, frame, expected error_code, expected in_reply_to_message_id)
    ("malformed-json", '{"message_type": "TEXT", ', "invalid_json", None),
    ("not-json-at-all", "hello", "invalid_json", None),
    ("empty-frame", "", "invalid_json", None),
    ("json-array", "[1, 2]", "invalid_message", None),
    ("json-number", "42", "invalid_message", None),
    ("json-string", '"TEXT"', "invalid_message", None),
    ("json-null", "null", "invalid_message", None),
    ("binary-frame", b'{"message_type": "TEXT", "text_payload": "hi"}', "invalid_message", None),
    ("no-message-type", {"text_payload": "hi", "message_id": "b1"}, "invalid_message", "b1"),
    ("message-type-number", {"message_type": 7, "message_id": "b2"}, "invalid_message", "b2"),
    ("message-type-empty", {"message_type": "", "message_id": "b3"}, "invalid_message", "b3"),
    ("unknown-type", {"message_type": "FOO", "message_id": "b4"}, "unsupported_type", "b4"),
    ("lowercase-type", {"message_type": "text", "text_payload": "x"}, "unsupported_type", None),
    *[
        (
            f"type-{name}",
            {"message_type": name, "message_id": f"t-{name}"},
            "unsupported_type",
            f"t-{name}",
        )
        for name in NOT_FOR_FRONTENDS
    ],
    ("text-missing-payload", {"message_type": "TEXT", "message_id": "b5"}, "invalid_message", "b5"),
    (
        "text-empty",
        {"message_type": "TEXT", "text_payload": "", "message_id": "b6"},
        "invalid_message",
        "b6",
    ),
    (
        "text-blank",
        {"message_type": "TEXT", "text_payload": " \n\t", "message_id": "b7"},
        "invalid_message",
        "b7",
    ),
    (
        "text-payload-number",
        {"message_type": "TEXT", "text_payload": 5, "message_id": "b8"},
        "invalid_message",
        "b8",
    ),
    (
        "text-receiver-too-long",
        {"message_type": "TEXT", "text_payload": "x", "receiver_id": "a" * 129, "message_id": "b9"},
        "invalid_message",
        "b9",
    ),
    (
        "text-metadata-not-object",
        {"message_type": "TEXT", "text_payload": "x", "metadata": [1], "message_id": "b10"},
        "invalid_message",
        "b10",
    ),
    (
        "text-metadata-too-many",
        {
            "message_type": "TEXT",
            "text_payload": "x",
            "metadata": {f"k{i}": "v" for i in range(65)},
            "message_id": "b11",
        },
        "invalid_message",
        "b11",
    ),
    (
        "text-metadata-too-deep",
        {"message_type": "TEXT", "text_payload": "x", "metadata": NESTED_300, "message_id": "b20"},
        "invalid_message",
        "b20",
    ),
    (
        "text-metadata-too-deep-for-the-encoders",
        {"message_type": "TEXT", "text_payload": "x", "metadata": NESTED_254, "message_id": "b21"},
        "invalid_message",
        "b21",
    ),
    (
        "text-conversation-not-string",
        {"message_type": "TEXT", "text_payload": "x", "conversation_id": {}, "message_id": "b12"},
        "invalid_message",
        "b12",
    ),
    (
        "cancel-without-in-reply-to",
        {"message_type": "CANCEL", "message_id": "b13"},
        "invalid_message",
        "b13",
    ),
    (
        "cancel-empty-in-reply-to",
        {"message_type": "CANCEL", "in_reply_to_message_id": "", "message_id": "b14"},
        "invalid_message",
        "b14",
    ),
    (
        "cancel-of-an-unknown-message",
        {"message_type": "CANCEL", "in_reply_to_message_id": "never-sent", "message_id": "b22"},
        "unknown_message",
        "b22",
    ),
    (
        "register-again",
        {"message_type": "REGISTER_FRONTEND", "frontend_name": "again", "message_id": "b15"},
        "already_registered",
        "b15",
    ),
    *[
        (
            f"{kind}-bad-message-id-{index}",
            {"message_type": kind, "message_id": bad_id, **extra},
            "invalid_message",
            echoed_id(bad_id),
        )
        for kind, extra in (
            ("TEXT", {"text_payload": "hi"}),
            ("CANCEL", {"in_reply_to_message_id": "m-1"}),
            ("REQUEST_AGENT_STATUS", {}),
        )
        for index, bad_id in enumerate(BAD_MESSAGE_IDS)
    ],
]


@pytest.mark.parametrize(
    ("frame", "code", "in_reply_to"),
    [pytest.param(frame, code, reply, id=case) for case, frame, code, reply in BAD_FRAMES],
)
async def test_bad_frame_after_registration(
    scene: Scene, frame: str | bytes | dict[str, Any], code: str, in_reply_to: str | None
) -> None:
    bad = await scene.frontend()
    await bad.send(frame)
    error = await bad.next_chat()
    assert_error(error, code, in_reply_to)
    # Exactly one answer, and the socket still works.
    assert bad.non_presence(await bad.barrier()) == []
    assert not bad.is_closed
    await scene.assert_healthy_unaffected()


async def test_many_bad_frames_in_a_row_each_get_an_answer(scene: Scene) -> None:
    bad = await scene.frontend()
    for index in range(50):
        await bad.send({"message_type": "NOPE", "message_id": f"n{index}"})
    for index in range(50):
        assert_error(await bad.next_chat(), "unsupported_type", f"n{index}")
    await bad.send_text("finally valid", message_id="valid-after")
    message = await scene.broker_in.next()
    assert message["message_id"] == "valid-after"
    await scene.assert_healthy_unaffected()


# -- before registration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        pytest.param({"message_type": "TEXT", "text_payload": "hi"}, "not_registered", id="text"),
        pytest.param({"message_type": "REQUEST_AGENT_STATUS"}, "not_registered", id="status"),
        pytest.param(
            {"message_type": "CANCEL", "in_reply_to_message_id": "m"}, "not_registered", id="cancel"
        ),
        pytest.param({"message_type": "REPLY"}, "not_registered", id="reply"),
        pytest.param("{oops", "invalid_json", id="malformed-json"),
        pytest.param({"message_type": "FOO"}, "unsupported_type", id="unknown-type"),
        pytest.param("[]", "invalid_message", id="not-an-object"),
    ],
)
async def test_frame_before_registration_closes_1008(
    scene: Scene, frame: str | dict[str, Any], code: str
) -> None:
    bad = await scene.frontend(register=False)
    await bad.send(frame)
    assert_error(await bad.next(), code)
    assert await bad.wait_closed() == 1008
    await scene.assert_healthy_unaffected()


async def test_text_before_registration_names_its_message_id(scene: Scene) -> None:
    bad = await scene.frontend(register=False)
    await bad.send({"message_type": "TEXT", "text_payload": "hi", "message_id": "early"})
    assert_error(await bad.next(), "not_registered", "early")
    assert await bad.wait_closed() == 1008


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param({"message_type": "REGISTER_FRONTEND"}, id="no-name"),
        pytest.param({"message_type": "REGISTER_FRONTEND", "frontend_name": ""}, id="empty-name"),
        pytest.param(
            {"message_type": "REGISTER_FRONTEND", "frontend_name": "x" * 300}, id="long-name"
        ),
        pytest.param(
            {"message_type": "REGISTER_FRONTEND", "frontend_name": "x", "capabilities": "all"},
            id="capabilities-not-object",
        ),
        pytest.param(
            {"message_type": "REGISTER_FRONTEND", "frontend_name": "x", "message_id": "a b"},
            id="bad-message-id",
        ),
        pytest.param(b'{"message_type": "REGISTER_FRONTEND"}', id="binary"),
    ],
)
async def test_bad_registration_can_be_corrected(
    scene: Scene, frame: bytes | dict[str, Any]
) -> None:
    newcomer = await scene.frontend(register=False)
    await newcomer.send(frame)
    in_reply_to = echoed_id(frame.get("message_id")) if isinstance(frame, dict) else None
    assert_error(await newcomer.next(), "invalid_message", in_reply_to)
    assert not newcomer.is_closed
    await newcomer.register("Corrected")
    assert newcomer.frontend_id is not None
    assert newcomer.frontend_id.startswith("web_")
    await scene.assert_healthy_unaffected()


async def test_resume_with_wrong_token_opens_a_new_session(scene: Scene) -> None:
    newcomer = await scene.frontend(register=False)
    await newcomer.send(
        {
            "message_type": "REGISTER_FRONTEND",
            "frontend_name": "Impostor",
            "frontend_id": scene.healthy.frontend_id,
            "resume_token": "guessed",
        }
    )
    response = await newcomer.next()
    assert response["message_type"] == "REGISTER_FRONTEND_RESPONSE"
    assert response["frontend_id"] != scene.healthy.frontend_id
    await scene.assert_healthy_unaffected()


async def test_registration_timeout_closes_1008() -> None:
    async with (
        running_hub(test_settings(registration_timeout=0.3)) as hub,
        await Frontend.connect(hub.ws_url) as silent,
        await Frontend.registered(hub.ws_url, "Healthy") as healthy,
    ):
        error = await silent.next(timeout=5)
        assert_error(error, "not_registered")
        assert await silent.wait_closed(timeout=5) == 1008
        # The healthy socket registered in time and is not closed by anyone else's timeout.
        assert healthy.non_presence(await healthy.barrier()) == []
        assert not healthy.is_closed


# -- size limit ---------------------------------------------------------------------------------


@pytest.mark.parametrize("registered", [True, False], ids=["registered", "unregistered"])
async def test_frame_over_max_message_bytes_closes_1009(scene: Scene, registered: bool) -> None:
    bad = await scene.frontend(register=registered)
    await bad.send(json.dumps({"message_type": "TEXT", "text_payload": "x" * (MAX_BYTES + 10)}))
    assert await bad.wait_closed() == 1009
    await scene.assert_healthy_unaffected()


async def test_frame_just_under_max_message_bytes_is_accepted(scene: Scene) -> None:
    sender = await scene.frontend()
    frame = {"message_type": "TEXT", "message_id": "big", "text_payload": ""}
    frame["text_payload"] = "x" * (MAX_BYTES - len(json.dumps(frame)))
    assert len(json.dumps(frame).encode()) == MAX_BYTES
    await sender.send(frame)
    message = await scene.broker_in.next()
    assert message["message_id"] == "big"
    assert len(message["text_payload"]) == len(frame["text_payload"])


# -- origin allow-list ----------------------------------------------------------------------------


async def test_origin_not_allowed_is_refused() -> None:
    settings = test_settings(allowed_origins="http://good.example")
    async with running_hub(settings) as hub:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(hub.ws_url, origin="http://evil.example", open_timeout=5):  # type: ignore[arg-type]
                pass
        assert refused.value.response.status_code == 403
        ws = await connect(hub.ws_url, origin="http://good.example", open_timeout=5)  # type: ignore[arg-type]
        async with Frontend(ws) as allowed:
            await allowed.register("Allowed")
            assert allowed.frontend_id is not None


async def test_binary_frames_do_not_extend_the_registration_timeout() -> None:
    timeout = 0.5
    async with (
        running_hub(test_settings(registration_timeout=timeout)) as hub,
        await Frontend.connect(hub.ws_url) as stalling,
    ):
        started = asyncio.get_running_loop().time()

        async def keep_sending_binary() -> None:
            while True:
                await stalling.send(b"\x00")
                await asyncio.sleep(timeout / 3)  # the client's own pace

        sender = asyncio.create_task(keep_sending_binary())
        try:
            code = await stalling.wait_closed(timeout=timeout * 6)
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender
        assert code == 1008
        assert asyncio.get_running_loop().time() - started < timeout * 6
        frames = stalling.take_buffered()
        assert [f["error_code"] for f in frames][-1] == "not_registered"
        assert {f["error_code"] for f in frames[:-1]} <= {"invalid_message"}
