"""A WebSocket client that behaves as an attacker may: it writes frames as it likes (binary,
one byte per fragment) and reads only when it wants to, with a small receive buffer so that
not reading soon pushes back on the server."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
from dataclasses import dataclass
from typing import Any

TEXT, BINARY, CONTINUATION, CLOSE = 0x1, 0x2, 0x0, 0x8
# What the kernel keeps for a socket that does not read (it doubles the value asked for).
SMALL_BUFFER = 16 * 1024
WAIT = 15.0


def frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """One masked client frame (RFC 6455 §5.2)."""
    mask = os.urandom(4)
    first = (0x80 if fin else 0) | opcode
    length = len(payload)
    if length < 126:
        head = bytes((first, 0x80 | length))
    elif length < 1 << 16:
        head = struct.pack("!BBH", first, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, length)
    masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
    return head + mask + masked


def fragments(payload: bytes, size: int) -> bytes:
    """`payload` as a text message cut into frames of `size` bytes."""
    pieces = [payload[i : i + size] for i in range(0, len(payload), size)]
    return b"".join(
        frame(TEXT if index == 0 else CONTINUATION, piece, fin=index == len(pieces) - 1)
        for index, piece in enumerate(pieces)
    )


@dataclass
class ServerFrame:
    opcode: int
    payload: bytes

    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.payload)
        return data

    @property
    def close_code(self) -> int | None:
        if self.opcode != CLOSE or len(self.payload) < 2:
            return None
        code: int = struct.unpack("!H", self.payload[:2])[0]
        return code


class RawSocket:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.frontend_id = ""

    @classmethod
    async def connect(
        cls, host: str, port: int, *, receive_buffer: int = SMALL_BUFFER, timeout: float = WAIT
    ) -> RawSocket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        async with asyncio.timeout(timeout):
            await asyncio.get_running_loop().sock_connect(sock, (host, port))
            reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
            key = base64.b64encode(os.urandom(16)).decode()
            writer.write(
                (
                    f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                    "Sec-WebSocket-Version: 13\r\n\r\n"
                ).encode()
            )
            head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    async def register(self, name: str = "raw", *, timeout: float = WAIT, **fields: Any) -> None:
        """Registers and reads up to the registration response (not the agent list)."""
        await self.send_json({"message_type": "REGISTER_FRONTEND", "frontend_name": name, **fields})
        async with asyncio.timeout(timeout):
            while True:
                received = await self.read_frame()
                if received.opcode == TEXT:
                    data = received.json()
                    if data.get("message_type") == "REGISTER_FRONTEND_RESPONSE":
                        self.frontend_id = data["frontend_id"]
                        return

    async def send_raw(self, data: bytes, *, timeout: float = WAIT) -> None:
        """Writes `data`; TimeoutError when the server stops taking it for `timeout`."""
        self.writer.write(data)
        async with asyncio.timeout(timeout):
            await self.writer.drain()

    async def send_json(self, data: dict[str, Any]) -> None:
        await self.send_raw(frame(TEXT, json.dumps(data).encode()))

    async def read_frame(self) -> ServerFrame:
        first, second = await self.reader.readexactly(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return ServerFrame(first & 0x0F, await self.reader.readexactly(length))

    async def read_until_closed(self, timeout: float) -> tuple[list[dict[str, Any]], int | None]:
        """Every text frame until the server's close frame (or the end of the connection);
        the close code, if one came."""
        frames: list[dict[str, Any]] = []
        async with asyncio.timeout(timeout):
            while True:
                try:
                    received = await self.read_frame()
                except (asyncio.IncompleteReadError, ConnectionError):
                    return frames, None
                if received.opcode == CLOSE:
                    return frames, received.close_code
                if received.opcode == TEXT:
                    frames.append(received.json())

    def abort(self) -> None:
        self.writer.transport.abort()
