"""A lean WebSocket client for thousands of idle or listening frontends.

The `websockets` library is the right client for chatting frontends, but ten thousand of them
in the harness would cost more CPU than the hub fanning out to them, and the harness shares the
machine with the hub. This client does only what a listening frontend needs (RFC 6455 without
extensions): the upgrade, one masked REGISTER_FRONTEND, reading text frames, answering pings.
Each text frame is handed to a callback with its arrival time.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import time
from collections.abc import Callable
from typing import cast

import orjson

from agentcomm.bench.procs import BenchError

TextCallback = Callable[["RawFrontend", bytes, float], None]

_OP_TEXT = 0x1
_OP_CLOSE = 0x8
_OP_PING = 0x9
_OP_PONG = 0xA


def _masked_frame(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    repeated = (mask * (length // 4 + 1))[:length]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(
        length, "big"
    )
    return head + mask + masked


class RawFrontend(asyncio.Protocol):
    """One socket; `registered` resolves with the frontend id once the hub has answered."""

    def __init__(self, host: str, port: int, on_text: TextCallback | None) -> None:
        self._host = host
        self._port = port
        self.on_text = on_text
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._upgraded = False
        loop = asyncio.get_running_loop()
        self.upgraded: asyncio.Future[None] = loop.create_future()
        self.registered: asyncio.Future[str] = loop.create_future()
        self.closed = loop.create_future()
        self.frames = 0
        self._pending_id: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio.Transport (the harness may run on it).
        self._transport = cast(asyncio.Transport, transport)
        key = base64.b64encode(os.urandom(16)).decode()
        self._transport.write(
            (
                f"GET /ws HTTP/1.1\r\nHost: {self._host}:{self._port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._upgraded:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(self._buffer[:end]).split(b"\r\n", 1)[0]
            del self._buffer[: end + 4]
            if b" 101 " not in status + b" ":
                self._fail(BenchError(f"WebSocket upgrade refused: {status!r}"))
                return
            self._upgraded = True
            if not self.upgraded.done():
                self.upgraded.set_result(None)
        self._frames()

    def _frames(self) -> None:
        buffer = self._buffer
        now = time.perf_counter()
        while len(buffer) >= 2:
            first, second = buffer[0], buffer[1]
            length = second & 0x7F
            offset = 2
            if length == 126:
                if len(buffer) < 4:
                    return
                length = struct.unpack_from("!H", buffer, 2)[0]
                offset = 4
            elif length == 127:
                if len(buffer) < 10:
                    return
                length = struct.unpack_from("!Q", buffer, 2)[0]
                offset = 10
            if len(buffer) < offset + length:
                return
            payload = bytes(buffer[offset : offset + length])
            del buffer[: offset + length]
            opcode = first & 0x0F
            if opcode == _OP_TEXT:
                self.frames += 1
                self._text(payload, now)
            elif opcode == _OP_PING:
                self._send(_OP_PONG, payload)
            elif opcode == _OP_CLOSE:
                self._send(_OP_CLOSE, payload[:2])
                if self._transport is not None:
                    self._transport.close()

    def _text(self, payload: bytes, now: float) -> None:
        if not self.registered.done():
            if b"REGISTER_FRONTEND_RESPONSE" in payload:
                self._pending_id = str(orjson.loads(payload).get("frontend_id", ""))
            elif b"AGENT_STATUS_UPDATE" in payload and self._pending_id is not None:
                # Registered once the agent list that follows the response has arrived.
                self.registered.set_result(self._pending_id)
            elif b'"ERROR"' in payload:
                self._fail(BenchError(f"Registration refused: {payload[:200]!r}"))
            return
        if self.on_text is not None:
            self.on_text(self, payload, now)

    def _send(self, opcode: int, payload: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(_masked_frame(opcode, payload))

    def send_text(self, text: bytes) -> None:
        self._send(_OP_TEXT, text)

    def register(self, name: str) -> None:
        self.send_text(orjson.dumps({"message_type": "REGISTER_FRONTEND", "frontend_name": name}))

    def _fail(self, exc: BaseException) -> None:
        for future in (self.upgraded, self.registered):
            if not future.done():
                future.set_exception(exc)
        if self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(BenchError(f"connection closed ({exc!r})"))
        if not self.closed.done():
            self.closed.set_result(None)

    def close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._send(_OP_CLOSE, struct.pack("!H", 1000))
            self._transport.close()


async def open_frontends(
    port: int,
    count: int,
    on_text: TextCallback | None = None,
    *,
    concurrency: int = 100,
    timeout: float = 30.0,
    progress: Callable[[int], None] | None = None,
) -> list[RawFrontend]:
    """Opens and registers `count` frontends against 127.0.0.1:port."""
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(concurrency)
    opened: list[RawFrontend] = []

    async def one(index: int) -> None:
        async with gate:
            _, frontend = await loop.create_connection(
                lambda: RawFrontend("127.0.0.1", port, on_text), "127.0.0.1", port
            )
            opened.append(frontend)
            async with asyncio.timeout(timeout):
                await frontend.upgraded
                frontend.register(f"listener-{index}")
                await frontend.registered
            if progress is not None:
                progress(len(opened))

    tasks = [asyncio.create_task(one(index)) for index in range(count)]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await close_frontends(opened)
        raise
    return opened


async def close_frontends(frontends: list[RawFrontend], timeout: float = 10.0) -> None:
    for frontend in frontends:
        frontend.close()
    waiting = [frontend.closed for frontend in frontends if not frontend.closed.done()]
    if waiting:
        await asyncio.wait(waiting, timeout=timeout)
