"""uvicorn's WebSocket protocol (websockets, sans-I/O), lending the hub its transport.

The hub writes frames it has framed itself (`server/ws/output.py`) straight to the transport of an
accepted socket, in order with everything uvicorn writes there (pings, the close frame). The
protocol puts itself into the ASGI scope under `DIRECT_OUTPUT`; reading, the handshake,
keepalive and the close handshake stay uvicorn's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request

# The key of the ASGI scope's "extensions" under which an accepted socket's output is found.
DIRECT_OUTPUT = "agentcomm.direct_output"


class HubWebSocketProtocol(WebSocketsSansIOProtocol):
    """One WebSocket connection; also the `DirectOutput` of its socket."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Called when the transport takes writes again after it asked to pause.
        self.on_writable: Callable[[], None] | None = None
        # The transport's buffer is over its high-water mark: the peer reads too slowly. A plain
        # attribute, as it is read once per socket on every fan-out.
        self.output_paused = False
        # Takes each text message as it is parsed, once the hub has registered the socket
        # (`DirectInput`); until then, and for everything else, uvicorn's ASGI queue.
        self.on_text: Callable[[str], None] | None = None
        self._input_paused = False

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        if self.response.status_code == 101:
            # The application task is created but has not run yet: it finds this in its scope.
            extensions: dict[str, object] = self.scope["extensions"]  # type: ignore[assignment]
            extensions[DIRECT_OUTPUT] = self

    def start_keepalive(self) -> None:
        # Called once the handshake response is written: an idle socket need not keep it.
        super().start_keepalive()
        del self.response

    def pause_writing(self) -> None:
        super().pause_writing()
        self.output_paused = True

    def resume_writing(self) -> None:
        super().resume_writing()
        self.output_paused = False
        if self.on_writable is not None:
            self.on_writable()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.on_writable = None
        self.on_text = None
        self.output_paused = False  # nothing waits for a drain that will not come

    async def run_asgi(self) -> None:
        await super().run_asgi()
        # The scope refers to this protocol and this protocol to the scope: a reference cycle
        # that would leave each closed connection to a full collection to find (and none is
        # found while the hub keeps connection state frozen out of collections: `collector`).
        extensions: dict[str, object] = self.scope["extensions"]  # type: ignore[assignment]
        extensions.pop(DIRECT_OUTPUT, None)

    # -- DirectInput -------------------------------------------------------------------------

    def send_receive_event_to_app(self) -> None:
        # uvicorn queues each message for the application's `receive` and stops reading the
        # socket until the application took it: per frame a queue hand-over, a wake-up of the
        # reading task and two changes of the socket's polling. A registered frontend's text goes
        # straight to the hub, which stops reading only when it falls behind (pause_input).
        on_text = self.on_text
        if on_text is None or self.curr_msg_data_type != "text" or self.close_sent:
            super().send_receive_event_to_app()
            return
        frames = self.frames
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        try:
            text = data.decode()
        except UnicodeDecodeError:
            super().send_receive_event_to_app()  # refused there, with close code 1007
            return
        self.frames = []
        on_text(text)

    def pause_input(self) -> None:
        """Stops reading the socket until resume_input (the hub has enough of its frames)."""
        self._input_paused = True
        if not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_input(self) -> None:
        if self._input_paused:
            self._input_paused = False
            if not self.read_paused:  # uvicorn's own pause stays until its queue is read
                self.transport.resume_reading()

    # -- DirectOutput ------------------------------------------------------------------------

    @property
    def output_open(self) -> bool:
        """Frames written now would reach the peer: accepted, not closing, not lost."""
        return (
            self.handshake_complete
            and not self.close_sent
            and not self.disconnected
            and not self.transport.is_closing()
        )

    def write_output(self, data: bytes) -> None:
        self.transport.write(data)
