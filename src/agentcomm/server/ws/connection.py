"""The frontend WebSocket `/ws` (PROTOCOL §3): frames in, core calls, frames out.

Frames out are queued per socket and written by the hub's output scheduler (`ws/output.py`), with
no task per socket; while a peer does not read, its frames wait, and once more than
OUTBOUND_QUEUE_FRAMES wait it is closed with 4008, so one slow client never holds memory or
delays anyone else. An idle registered socket has one task: uvicorn's, reading.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, MutableMapping
from typing import Any, Protocol

from fastapi import WebSocket, WebSocketDisconnect

from agentcomm.core.ratelimit import TokenBucket
from agentcomm.core.sessions import FrontendSession
from agentcomm.protocol.codec import (
    encode_for_client,
    message_type_of,
    parse_json_object,
    reply_id,
    validate_model,
)
from agentcomm.protocol.errors import ProtocolError
from agentcomm.protocol.models import (
    Envelope,
    RefreshToken,
    RefreshTokenResponse,
    RequestHistory,
)
from agentcomm.protocol.rules import FrontendFrame, frontend_frame_kind
from agentcomm.protocol.timestamps import from_epoch, to_iso
from agentcomm.protocol.vocabulary import ErrorCode
from agentcomm.server.ws.close_codes import (
    CLOSE_INTERNAL,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_RATE_LIMITED,
    CLOSE_RESTARTING,
    CLOSE_TOKEN_EXPIRED,
)
from agentcomm.server.ws.frames import error_frame, message_id_of, refusal_frame
from agentcomm.server.ws.history import history_frame
from agentcomm.server.ws.output import SocketLink
from agentcomm.server.ws.parts import FrontendParts
from agentcomm.server.ws.protocol import DIRECT_OUTPUT, HubWebSocketProtocol
from agentcomm.server.ws.registration import authenticate_frontend, register_frontend

log = logging.getLogger(__name__)

# Frames read from a socket but not handled yet; when it is full, reading waits (and so, through
# TCP, does the client).
INBOUND_QUEUE_FRAMES = 256


class DirectInput(Protocol):
    """A registered socket's text messages, handed over as the protocol parses them
    (`server.ws.protocol.HubWebSocketProtocol`)."""

    on_text: Callable[[str], None] | None

    def pause_input(self) -> None: ...

    def resume_input(self) -> None: ...


class FrontendConnection:
    """One frontend socket from handshake to close."""

    def __init__(self, parts: FrontendParts, websocket: WebSocket) -> None:
        self._parts = parts
        self._websocket = websocket
        self._session: FrontendSession | None = None
        self._link: SocketLink  # made once the socket is accepted
        self._input: DirectInput  # the same protocol object as the link's output
        # Frames of the registered frontend (see _take_frame); made at its first frame.
        self._bucket: TokenBucket | None = None
        self._refused_in_a_row = 0
        self._binary_refused = False
        # Ends the session when its token expires (with AUTH_SECRET set).
        self._expiry: asyncio.TimerHandle | None = None
        self._inbound: asyncio.Queue[tuple[float, str] | None] | None = None
        self._handler: asyncio.Task[None] | None = None
        self._input_paused = False

    async def run(self) -> None:
        parts = self._parts
        websocket = self._websocket
        if parts.state.draining:
            # Accepted first: a close before the handshake is an HTTP 403, which a client takes
            # for "forbidden" rather than "the server is going away, come back later".
            await websocket.accept()
            await websocket.close(CLOSE_RESTARTING)
            return
        output: HubWebSocketProtocol | None = websocket.scope.get("extensions", {}).get(
            DIRECT_OUTPUT
        )
        await websocket.accept()
        if output is None:
            log.error("The frontend socket needs agentcomm's uvicorn WebSocket protocol")
            await websocket.close(CLOSE_INTERNAL)
            return
        link = SocketLink(
            output,
            parts.output,
            parts.settings.outbound_queue_frames,
            parts.settings.outbound_queue_bytes,
        )
        self._link = link
        self._input = output
        parts.state.connections.add(link)
        try:
            await self._converse_until_closed(link)
        finally:
            self._token_expires_at(None)
            parts.state.connections.discard(link)
            if self._session is not None:
                parts.sessions.detach(self._session.frontend_id, link)
            code = link.close_code or CLOSE_NORMAL
            link.close(code)
            link.flush(even_if_paused=True)
            try:
                # A client that does not read cannot take even the close frame: give up on it
                # after a moment and let the server drop the connection.
                async with asyncio.timeout(2.0):
                    await websocket.close(code)
            except TimeoutError:
                log.info("Dropped a frontend connection that would not take its close frame")
            except (RuntimeError, OSError, WebSocketDisconnect):
                pass  # the socket went away first
            if code == CLOSE_RATE_LIMITED:
                # A flood: nothing more of it is read, not even the close handshake's answer
                # (uvicorn would read, and parse, all it sends until its close timer ends
                # the connection, at the cost of everyone else's turn of the loop).
                self._input.pause_input()
            link.mark_closed()

    async def _converse_until_closed(self, link: SocketLink) -> None:
        """Reads and handles frames until the socket closes or the server closes it. The
        reader may be blocked waiting for a frame when the server decides to close (shutdown,
        a client too slow to read): then the close interrupts it."""
        task = asyncio.current_task()
        assert task is not None
        interrupted = False

        def wake() -> None:
            nonlocal interrupted
            if asyncio.current_task() is not task:  # the reader itself just returns
                interrupted = True
                task.cancel()

        link.waking(wake)
        try:
            await self._converse()
        except asyncio.CancelledError:
            # Our own interruption is swallowed; any other cancellation goes on.
            if not interrupted or task.uncancel() > 0:
                raise
        finally:
            link.waking(None)

    async def _converse(self) -> None:
        try:
            registered = await register_frontend(
                self._parts, self._link, self._receive, self._websocket.query_params.get("token")
            )
            if registered is not None:
                self._session = registered.session
                self._token_expires_at(registered.token_expires_at)
                await self._read_frames()
        except WebSocketDisconnect:
            pass
        except Exception:
            log.exception("Frontend connection failed")
            self._link.close(CLOSE_INTERNAL)

    async def _receive(self, within: float | None = None) -> str | None:
        """The next text frame; None when the server is closing the socket. Binary frames are
        refused."""
        # One deadline for the whole wait: refused binary frames must not extend it.
        deadline = None if within is None else asyncio.get_running_loop().time() + within
        while True:
            event: MutableMapping[str, Any]
            if deadline is None:
                event = await self._websocket.receive()
            else:
                async with asyncio.timeout_at(deadline):
                    event = await self._websocket.receive()
            if event["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(event.get("code", CLOSE_NORMAL))
            text = event.get("text")
            if text is not None:
                return str(text)
            self._refuse_binary()
            if self._link.close_code is not None:
                return None  # a flood: what else it sent is not read

    async def _read_frames(self) -> None:
        assert self._session is not None
        frontend_id = self._session.frontend_id
        # Text messages now come straight from the protocol (`DirectInput`); this task reads
        # only what uvicorn still queues: frames that came with the registration, binary frames
        # and the disconnect.
        self._input.on_text = self._take_frame
        try:
            while self._link.close_code is None:
                raw = await self._receive()
                if raw is not None:
                    self._take_frame(raw)
        except WebSocketDisconnect:
            # From now on what is addressed to the frontend waits for its resume; what it sent
            # before it left is still handled.
            self._input.on_text = None
            self._parts.sessions.detach(frontend_id, self._link)
            if self._inbound is not None and self._handler is not None:
                self._inbound.put_nowait(None)
                await self._handler
            raise
        finally:
            self._input.on_text = None
            if self._handler is not None:
                self._handler.cancel()
                await asyncio.gather(self._handler, return_exceptions=True)

    def _within_rate(self) -> bool | None:
        """Takes a frame from the rate limit: True when it is within, False when it is over,
        None when the frontend keeps flooding and its socket is now closing (4029)."""
        settings = self._parts.settings
        if self._bucket is None:
            # Made at the first frame: most sockets mostly listen, and an idle one should cost
            # little more than its connection.
            self._bucket = TokenBucket(
                self._parts.clock,
                rate=settings.rate_limit_per_second,
                burst=settings.rate_limit_burst,
            )
        if self._bucket.take():
            self._refused_in_a_row = 0
            return True
        self._refused_in_a_row += 1
        if self._refused_in_a_row > settings.rate_limit_burst:
            who = self._session.frontend_id if self._session is not None else "(unregistered)"
            log.warning("Closing frontend %s: it keeps flooding", who)
            self._link.close(CLOSE_RATE_LIMITED)
            return None
        return False

    def _refuse_binary(self) -> None:
        """Binary frames have no use in the protocol: the first is answered with an ERROR, and
        every one counts against the rate limit like a text frame, so that a flood of them is
        cut off (4029) instead of costing the server a wake-up and an answer each."""
        if self._link.close_code is not None or not self._within_rate():
            return
        if self._binary_refused:
            return
        self._binary_refused = True
        log.info("A frontend sent a binary frame; further ones are dropped unanswered")
        self._link.send_frame(
            error_frame(
                ErrorCode.INVALID_MESSAGE,
                "Frames must be JSON text, not binary; binary frames are dropped from now on.",
            )
        )

    def _take_frame(self, raw: str) -> None:
        """A text frame of the registered frontend, in arrival order: the rate limit, then the
        queue of the task that handles frames."""
        link = self._link
        session = self._session
        if link.close_code is not None or session is None:
            return  # closing: what is still read is not answered
        frontend_id = session.frontend_id
        within = self._within_rate()
        if within is None:
            return
        if not within:
            # Told once per refused frame; a client that keeps flooding is cut off.
            self._refuse_flood(frontend_id, raw)
            return
        inbound = self._inbound
        if inbound is None or self._handler is None:
            # Frames are handled in order by their own task, so that reading goes on while one
            # waits for the bus: each is then answered within its deadline from arrival, not
            # after those queued before it have each used up theirs.
            inbound = self._inbound = asyncio.Queue()
            self._handler = asyncio.create_task(
                self._handle_frames(frontend_id, inbound), name="ws-handler"
            )
        inbound.put_nowait((asyncio.get_running_loop().time(), raw))
        if inbound.qsize() >= INBOUND_QUEUE_FRAMES:
            # Reading waits (and so, through TCP, does the client) until the handler caught up.
            # Asked again on every frame past the mark: uvicorn resumes reading on its own when
            # its queue empties.
            self._input_paused = True
            self._input.pause_input()

    def _refuse_flood(self, frontend_id: str, raw: str) -> None:
        settings = self._parts.settings
        self._parts.metrics.errors.labels(ErrorCode.RATE_LIMITED.value).inc()
        self._link.send_frame(
            error_frame(
                ErrorCode.RATE_LIMITED,
                f"Too many frames: at most {settings.rate_limit_per_second:g} per second. "
                "This frame was dropped.",
                message_id_of(raw),
                receiver_id=frontend_id,
            )
        )

    async def _handle_frames(
        self, frontend_id: str, inbound: asyncio.Queue[tuple[float, str] | None]
    ) -> None:
        while (item := await inbound.get()) is not None:
            if self._input_paused and inbound.qsize() <= INBOUND_QUEUE_FRAMES // 2:
                self._input_paused = False
                self._input.resume_input()
            received_at, raw = item
            try:
                await self._handle(frontend_id, raw, received_at)
            except ProtocolError as exc:
                log.info("Bad frame from %s: %s", frontend_id, exc.text)
                self._parts.metrics.errors.labels(exc.code.value).inc()
                self._link.send_frame(refusal_frame(exc, receiver_id=frontend_id))
            except Exception:
                # A failure of ours on one frame: it is answered like any refused frame, and
                # the socket, with everything else it has under way, stays open.
                log.exception("Handling a frame of frontend %s failed", frontend_id)
                self._parts.metrics.errors.labels(ErrorCode.INTERNAL.value).inc()
                self._link.send_frame(
                    error_frame(
                        ErrorCode.INTERNAL,
                        "The server failed on this frame; the failure was logged.",
                        message_id_of(raw),
                        receiver_id=frontend_id,
                    )
                )

    async def _handle(self, frontend_id: str, raw: str, received_at: float) -> None:
        data = parse_json_object(raw)
        kind = frontend_frame_kind(message_type_of(data), reply_id(data))
        if kind is FrontendFrame.CHAT:
            message = validate_model(Envelope, data)
            await self._parts.router.accept_from_frontend(
                frontend_id, message, received_at=received_at
            )
        elif kind is FrontendFrame.STATUS_REQUEST:
            validate_model(Envelope, data)  # a bad message_id is refused like on any frame
            self._link.send_frames(self._parts.presence.listing())
        elif kind is FrontendFrame.HISTORY_REQUEST:
            request_history = validate_model(RequestHistory, data)
            user = self._session.user if self._session is not None else frontend_id
            frame = await history_frame(self._parts.history, user, frontend_id, request_history)
            self._link.send_frame(frame)
        elif kind is FrontendFrame.REFRESH_TOKEN:
            request = validate_model(RefreshToken, data)
            expires_at = authenticate_frontend(self._parts.auth, request.token, request.message_id)
            self._token_expires_at(expires_at)
            response = RefreshTokenResponse(
                in_reply_to_message_id=request.message_id,
                expires_at=None if expires_at is None else to_iso(from_epoch(expires_at)),
            )
            self._link.send_frame(encode_for_client(response))
        else:
            raise ProtocolError(
                ErrorCode.ALREADY_REGISTERED, "This socket is already registered.", reply_id(data)
            )

    def _token_expires_at(self, expires_at: float | None) -> None:
        """Ends the session when its token expires (4001, after ERROR unauthorized), unless a
        REFRESH_TOKEN moves the moment on."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if expires_at is None:
            return
        loop = asyncio.get_running_loop()
        self._expiry = loop.call_at(
            loop.time() + max(0.0, expires_at - time.time()), self._token_expired
        )

    def _token_expired(self) -> None:
        self._expiry = None
        link = self._link
        if link.close_code is not None:
            return
        log.info(
            "Closing frontend %s: its token expired", self._session and self._session.frontend_id
        )
        link.send_frame(
            error_frame(
                ErrorCode.UNAUTHORIZED,
                "Your token expired; connect again with a fresh one (or send REFRESH_TOKEN "
                "before it expires).",
            )
        )
        link.close(CLOSE_TOKEN_EXPIRED)


async def serve_frontend_socket(parts: FrontendParts, websocket: WebSocket) -> None:
    """`/ws`: the origin check (when an allow-list is configured), then the connection."""
    origins = parts.settings.origins
    origin = websocket.headers.get("origin")
    if origins and origin is not None and origin not in origins:
        # Closing before accept answers the handshake with HTTP 403.
        await websocket.close(code=CLOSE_POLICY)
        return
    await FrontendConnection(parts, websocket).run()
