"""A minimal frontend: a real WebSocket client that registers and collects frames.

A reader task puts every frame in a buffer; `next()` takes the first buffered frame that matches
(leaving the others for later), waiting with a deadline when none does yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.support.waiting import DEFAULT_TIMEOUT

Frame = dict[str, Any]
Match = Callable[[Frame], bool]

PRESENCE = "AGENT_STATUS_UPDATE"


def of_type(*message_types: str, **fields: Any) -> Match:
    """Matches frames of one of `message_types` whose `fields` have exactly these values."""

    def match(frame: Frame) -> bool:
        return frame.get("message_type") in message_types and all(
            frame.get(key) == value for key, value in fields.items()
        )

    return match


class Frontend:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frontend_id: str | None = None
        self.registration: Frame | None = None
        self.first_status: Frame | None = None
        self._buffer: list[Frame] = []
        self._arrived = asyncio.Condition()
        self._closed = asyncio.Event()
        self.close_code: int | None = None
        self._reader = asyncio.create_task(self._read(), name="test-frontend-reader")

    @classmethod
    async def connect(cls, ws_url: str, *, timeout: float = DEFAULT_TIMEOUT) -> Frontend:
        async with asyncio.timeout(timeout):
            ws = await connect(ws_url, open_timeout=timeout, close_timeout=2)
        return cls(ws)

    @classmethod
    async def registered(
        cls,
        ws_url: str,
        name: str = "tester",
        *,
        capabilities: dict[str, Any] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        **fields: Any,
    ) -> Frontend:
        """`fields`: more of REGISTER_FRONTEND (`user_id`, `token`)."""
        frontend = await cls.connect(ws_url, timeout=timeout)
        await frontend.register(name, capabilities=capabilities, timeout=timeout, **fields)
        return frontend

    async def register(
        self,
        name: str = "tester",
        *,
        capabilities: dict[str, Any] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        **fields: Any,
    ) -> Frame:
        frame: Frame = {"message_type": "REGISTER_FRONTEND", "frontend_name": name, **fields}
        if capabilities is not None:
            frame["capabilities"] = capabilities
        await self.send(frame)
        response = await self.next(timeout=timeout)
        assert response["message_type"] == "REGISTER_FRONTEND_RESPONSE", response
        assert response["status"] == "success", response
        self.frontend_id = response["frontend_id"]
        self.registration = response
        status = await self.next(timeout=timeout)
        assert status["message_type"] == PRESENCE, status
        assert status["is_full_update"] is True, status
        self.first_status = status
        return response

    # -- sending -------------------------------------------------------------------------------

    async def send(self, frame: Frame | str | bytes, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        data: str | bytes = json.dumps(frame) if isinstance(frame, dict) else frame
        async with asyncio.timeout(timeout):
            await self.ws.send(data)

    async def send_text(self, text: str, **fields: Any) -> Frame:
        frame: Frame = {"message_type": "TEXT", "text_payload": text, **fields}
        await self.send(frame)
        return frame

    # -- receiving -----------------------------------------------------------------------------

    async def next(self, where: Match | None = None, *, timeout: float = DEFAULT_TIMEOUT) -> Frame:
        """The first frame (in arrival order) that matches; fails after `timeout`."""
        try:
            async with asyncio.timeout(timeout), self._arrived:
                while True:
                    for index, frame in enumerate(self._buffer):
                        if where is None or where(frame):
                            del self._buffer[index]
                            return frame
                    if self._closed.is_set():
                        raise AssertionError(
                            f"Socket closed ({self.close_code}) before the expected frame; "
                            f"unmatched frames: {self._buffer}"
                        )
                    await self._arrived.wait()
        except TimeoutError:
            raise AssertionError(
                f"No matching frame within {timeout} s; unmatched frames: {self._buffer}"
            ) from None

    async def next_chat(self, *, timeout: float = DEFAULT_TIMEOUT) -> Frame:
        """The next frame that is not presence (status updates may arrive at any time)."""
        return await self.next(lambda frame: frame.get("message_type") != PRESENCE, timeout=timeout)

    async def barrier(self, *, timeout: float = DEFAULT_TIMEOUT) -> list[Frame]:
        """Asks for the agent list and waits for it: whatever the server sent this socket
        before the answer is then in the buffer. Returns (and removes) the unmatched frames."""
        await self.send({"message_type": "REQUEST_AGENT_STATUS"})
        await self.next(of_type(PRESENCE, is_full_update=True), timeout=timeout)
        return self.take_buffered()

    def take_buffered(self) -> list[Frame]:
        frames, self._buffer = self._buffer, []
        return frames

    def non_presence(self, frames: list[Frame]) -> list[Frame]:
        return [frame for frame in frames if frame.get("message_type") != PRESENCE]

    async def wait_closed(self, *, timeout: float = DEFAULT_TIMEOUT) -> int | None:
        """Waits until the server closes the socket; returns the close code received."""
        try:
            async with asyncio.timeout(timeout):
                await self._closed.wait()
        except TimeoutError:
            raise AssertionError(f"The socket was not closed within {timeout} s") from None
        return self.close_code

    @property
    def is_closed(self) -> bool:
        return self._closed.is_set()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(3):
                await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            async with asyncio.timeout(3):
                await self._reader

    async def __aenter__(self) -> Frontend:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                assert isinstance(raw, str), f"the server sent a binary frame: {raw!r}"
                frame = json.loads(raw)
                assert isinstance(frame, dict), frame
                async with self._arrived:
                    self._buffer.append(frame)
                    self._arrived.notify_all()
        except ConnectionClosed:
            pass
        finally:
            # The code the server sent, not the one this client answered with.
            rcvd = self.ws.protocol.close_rcvd
            self.close_code = rcvd.code if rcvd is not None else None
            self._closed.set()
            async with self._arrived:
                self._arrived.notify_all()
