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
import logging
import struct
from collections.abc import Callable
from typing import Protocol

from agentcomm.server.ws.close_codes import CLOSE_INTERNAL, CLOSE_TOO_SLOW

log = logging.getLogger(__name__)

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


class DirectOutput(Protocol):
    """The transport of one accepted socket, as `HubWebSocketProtocol` (`server/ws/protocol.py`)
    lends it."""

    on_writable: Callable[[], None] | None
    output_paused: bool

    @property
    def output_open(self) -> bool: ...

    def write_output(self, data: bytes) -> None: ...


class SocketLink:
    """The sending half of one socket, as the core sees it (a FrontendLink).

    Frames are framed when queued and written by the hub's output scheduler at the next turn
    of the loop, all of one turn in one write. While the transport is paused (the peer does not
    read) they wait here; past `max_frames` the frontend is too slow and is closed.
    """

    __slots__ = (
        "_closed",
        "_closed_waiter",
        "_max_frames",
        "_output",
        "_pending",
        "_scheduler",
        "_wake",
        "close_code",
    )

    def __init__(self, output: DirectOutput, scheduler: OutputScheduler, max_frames: int) -> None:
        self._output = output
        self._scheduler = scheduler
        self._max_frames = max_frames
        self._pending: list[bytes] = []
        # Wakes the connection's reader when the server decides to close (set while it reads).
        self._wake: Callable[[], None] | None = None
        self.close_code: int | None = None
        self._closed = False
        self._closed_waiter: asyncio.Future[None] | None = None
        output.on_writable = self.flush

    def send_frame(self, frame: bytes) -> None:
        if self.close_code is not None:
            return
        pending = self._pending
        if len(pending) >= self._max_frames:
            log.warning("Closing a frontend that stopped reading (outbound queue full)")
            self.close(CLOSE_TOO_SLOW)
            return
        pending.append(self._scheduler.framed(frame))
        if len(pending) == 1:
            self._scheduler.mark(self)

    def flush(self, *, even_if_paused: bool = False) -> None:
        """Writes every queued frame in one transport write, unless the transport is paused."""
        pending = self._pending
        if not pending:
            return
        output = self._output
        if output.output_paused and not even_if_paused:
            return  # resumed later through on_writable
        if not output.output_open:
            pending.clear()  # the socket went away; the reader notices and cleans up
            return
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        pending.clear()
        try:
            output.write_output(data)
        except (RuntimeError, OSError) as exc:
            log.info("A frontend socket refused a write: %s", exc)
            self.close(CLOSE_INTERNAL)

    def close(self, code: int) -> None:
        """Asks the connection to close the socket after what is already queued."""
        if self.close_code is not None:
            return
        self.close_code = code
        if code == CLOSE_TOO_SLOW:
            # Nothing queued will be read anyway; make room for the close itself.
            self._pending.clear()
        if self._wake is not None:
            self._wake()

    def waking(self, wake: Callable[[], None] | None) -> None:
        """What close() calls to interrupt the connection (None: it is not interruptible)."""
        self._wake = wake

    def mark_closed(self) -> None:
        """The close frame went out (or the socket was given up on)."""
        self._closed = True
        self._output.on_writable = None
        if self._closed_waiter is not None and not self._closed_waiter.done():
            self._closed_waiter.set_result(None)

    async def wait_closed(self) -> None:
        if self._closed:
            return
        if self._closed_waiter is None:
            self._closed_waiter = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._closed_waiter)
