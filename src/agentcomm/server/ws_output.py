"""Frames out to frontend sockets: framed by the hub, written once per socket per loop turn.

A frontend gets several small frames at the same moment (a status echo and a reply, or every
presence delta of a burst), and every presence change goes to every socket. Writing each frame
through the ASGI layers costs a task switch, a text/bytes round trip and a `send` system call
per frame and per socket. Here the frames queued for one socket during one turn of the event
loop leave in one transport write, a frame handed to many sockets is framed once, and one
callback per turn writes for every socket that has something queued — no task per socket.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Protocol

_FIN_TEXT = 0x81
_TWO_BYTE_LENGTH = 126
_EIGHT_BYTE_LENGTH = 127


def text_frame(payload: bytes) -> bytes:
    """`payload` (UTF-8 text) as one unmasked, uncompressed WebSocket text frame (RFC 6455 §5.2:
    a server never masks)."""
    length = len(payload)
    if length < _TWO_BYTE_LENGTH:
        head = bytes((_FIN_TEXT, length))
    elif length < 1 << 16:
        head = struct.pack("!BBH", _FIN_TEXT, _TWO_BYTE_LENGTH, length)
    else:
        head = struct.pack("!BBQ", _FIN_TEXT, _EIGHT_BYTE_LENGTH, length)
    return head + payload


class Flushable(Protocol):
    def flush(self) -> None:
        """Writes what is queued for this socket, if its transport takes it now."""


class OutputScheduler:
    """Collects the sockets with frames queued during one loop turn and flushes them together
    at the start of the next one."""

    def __init__(self) -> None:
        self._dirty: list[Flushable] = []
        # The last frame framed and its wire bytes: a broadcast hands the same bytes object to
        # every socket in a row, so one entry is enough to frame it once.
        self._last_payload: bytes | None = None
        self._last_framed = b""

    def framed(self, payload: bytes) -> bytes:
        if payload is not self._last_payload:
            self._last_framed = text_frame(payload)
            self._last_payload = payload
        return self._last_framed

    def mark(self, link: Flushable) -> None:
        """`link` has frames queued; it is flushed once the current callbacks have run."""
        self._dirty.append(link)
        if len(self._dirty) == 1:
            asyncio.get_running_loop().call_soon(self._flush_all)

    def _flush_all(self) -> None:
        dirty, self._dirty = self._dirty, []
        self._last_payload = None
        self._last_framed = b""
        for link in dirty:
            link.flush()
