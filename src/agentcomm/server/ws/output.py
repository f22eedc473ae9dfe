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


class Holding(Flushable, Protocol):
    """A socket whose frames wait in its queue, as the scheduler's byte budget sees it."""

    @property
    def queued_bytes(self) -> int: ...

    def shed(self) -> None:
        """Drops what is queued and closes the socket as too slow (4008)."""


class OutputScheduler:
    """Collects the sockets with frames queued during one loop turn and flushes them together
    at the start of the next one; and keeps the bytes queued on all its sockets together within
    `total_bytes`, so that many slow sockets, each within its own bound, cannot add up to more
    memory than the hub means to spend on them."""

    def __init__(self, total_bytes: int | None = None) -> None:
        self._dirty: list[Flushable] = []
        # The last frame framed and its wire bytes: a broadcast hands the same bytes object to
        # every socket in a row, so one entry is enough to frame it once.
        self._last_payload: bytes | None = None
        self._last_framed = b""
        self._total_limit = total_bytes
        self.queued_bytes = 0
        # Sockets closed as too slow (4008) since start, for /metrics.
        self.too_slow_closes = 0
        # The sockets with frames waiting (a paused transport, or not flushed yet).
        self._holding: set[Holding] = set()

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

    # -- the hub-wide budget -------------------------------------------------------------------

    def queued(self, link: Holding, size: int) -> None:
        """`link` queued `size` more bytes; past the budget, the sockets holding the most are
        closed (4008) until it fits: they are the ones not reading."""
        self.queued_bytes += size
        self._holding.add(link)
        limit = self._total_limit
        if limit is None or self.queued_bytes <= limit:
            return
        for largest in sorted(self._holding, key=lambda holding: -holding.queued_bytes):
            if self.queued_bytes <= limit:
                break
            log.warning(
                "Closing the frontend socket holding the most output (%d bytes): the hub's "
                "outbound budget is spent",
                largest.queued_bytes,
            )
            largest.shed()  # gives its bytes back through released()

    def released(self, link: Holding, size: int) -> None:
        """`link` wrote or dropped `size` bytes; it holds none when `empty`."""
        self.queued_bytes -= size
        if not link.queued_bytes:
            self._holding.discard(link)


class FrameSource(Protocol):
    """Frames made only when a socket can take them (a long agent list, page by page)."""

    def next_frame(self) -> bytes | None:
        """The next frame; None once there is no more."""


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
    read) they wait here; past `max_bytes` (or `max_frames`) the frontend is too slow and is
    closed. What the transport holds on top is at most its high-water mark plus one write, so a
    socket costs at most about twice `max_bytes`, however much is sent to it.

    A frame source (`send_frames`) is read one frame at a time, and after the first only while
    nothing else waits here and the transport takes writes: a listing far larger than
    `max_bytes` reaches a reader at its own pace, and one that does not read holds one page of
    it, not all.
    """

    __slots__ = (
        "_closed",
        "_closed_waiter",
        "_max_bytes",
        "_max_frames",
        "_output",
        "_pending",
        "_scheduler",
        "_source",
        "_wake",
        "close_code",
        "queued_bytes",
    )

    def __init__(
        self,
        output: DirectOutput,
        scheduler: OutputScheduler,
        max_frames: int,
        max_bytes: int | None = None,
    ) -> None:
        self._output = output
        self._scheduler = scheduler
        self._max_frames = max_frames
        self._max_bytes = max_bytes
        self._pending: list[bytes] = []
        self.queued_bytes = 0
        self._source: FrameSource | None = None
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
        framed = self._scheduler.framed(frame)
        size = len(framed)
        # A frame into an empty queue always goes (the largest reply may exceed the bound by
        # itself); the bound is on what waits behind it.
        if pending and (
            len(pending) >= self._max_frames
            or (self._max_bytes is not None and self.queued_bytes + size > self._max_bytes)
        ):
            log.warning("Closing a frontend that stopped reading (outbound queue full)")
            self.close(CLOSE_TOO_SLOW)
            return
        pending.append(framed)
        self.queued_bytes += size
        if len(pending) == 1:
            self._scheduler.mark(self)
        self._scheduler.queued(self, size)

    def send_frames(self, source: FrameSource) -> None:
        """Sends what `source` gives: the first frame at once, in order with the frames sent
        around it, the others one at a time as the socket drains. A source still being read is
        dropped for this one: it says everything the older one would have."""
        if self.close_code is not None:
            return
        frame = source.next_frame()
        self._source = None if frame is None else source
        if frame is not None:
            self.send_frame(frame)

    def _pull(self) -> None:
        source = self._source
        if source is None or self._pending or self.close_code is not None:
            return
        if self._output.output_paused:
            return  # pulled again once the transport takes writes (flush)
        frame = source.next_frame()
        if frame is None:
            self._source = None
            return
        self.send_frame(frame)

    def flush(self, *, even_if_paused: bool = False) -> None:
        """Writes every queued frame in one transport write, unless the transport is paused."""
        pending = self._pending
        if not pending:
            self._pull()
            return
        output = self._output
        if output.output_paused and not even_if_paused:
            return  # resumed later through on_writable
        if not output.output_open:
            self._drop_pending()  # the socket went away; the reader notices and cleans up
            return
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        self._drop_pending()
        try:
            output.write_output(data)
        except (RuntimeError, OSError) as exc:
            log.info("A frontend socket refused a write: %s", exc)
            self.close(CLOSE_INTERNAL)
            return
        self._pull()

    def _drop_pending(self) -> None:
        self._pending.clear()
        size, self.queued_bytes = self.queued_bytes, 0
        self._scheduler.released(self, size)

    def close(self, code: int) -> None:
        """Asks the connection to close the socket after what is already queued."""
        if self.close_code is not None:
            return
        self.close_code = code
        self._source = None
        if code == CLOSE_TOO_SLOW:
            self._scheduler.too_slow_closes += 1
            # Nothing queued will be read anyway; make room for the close itself.
            self._drop_pending()
        if self._wake is not None:
            self._wake()

    def shed(self) -> None:
        """Drops what is queued and closes the socket as too slow (4008), also when it was
        closing already (its close then waits behind no output)."""
        self._drop_pending()
        self.close(CLOSE_TOO_SLOW)

    def waking(self, wake: Callable[[], None] | None) -> None:
        """What close() calls to interrupt the connection (None: it is not interruptible)."""
        self._wake = wake

    def mark_closed(self) -> None:
        """The close frame went out (or the socket was given up on)."""
        self._closed = True
        self._output.on_writable = None
        if self._pending:
            self._drop_pending()  # never written now: the budget has them back
        if self._closed_waiter is not None and not self._closed_waiter.done():
            self._closed_waiter.set_result(None)

    async def wait_closed(self) -> None:
        if self._closed:
            return
        if self._closed_waiter is None:
            self._closed_waiter = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._closed_waiter)
