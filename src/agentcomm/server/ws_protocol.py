"""uvicorn's WebSocket protocol (websockets, sans-I/O), lending the hub its transport.

The hub writes frames it has framed itself (`ws_output`) straight to the transport of an
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
        self.output_paused = False  # nothing waits for a drain that will not come

    async def run_asgi(self) -> None:
        await super().run_asgi()
        # The scope refers to this protocol and this protocol to the scope: a reference cycle
        # that would leave each closed connection to a full collection to find (and none is
        # found while the hub keeps connection state frozen out of collections: `collector`).
        extensions: dict[str, object] = self.scope["extensions"]  # type: ignore[assignment]
        extensions.pop(DIRECT_OUTPUT, None)

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
