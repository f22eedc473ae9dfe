"""A hub with its HTTP/WebSocket and gRPC listeners: started, and stopped in a fixed order.

Stop order (bounded by SHUTDOWN_TIMEOUT): refuse new sockets → close every frontend socket with
1001 (or 1012 for a restart) → stop uvicorn → stop the hub (gRPC with a grace period, bus
consumers finish what they hold, bus closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Generator

import uvicorn

from agentcomm.bus.base import Bus
from agentcomm.config import Settings
from agentcomm.core.clock import Clock
from agentcomm.server.http.app import create_app
from agentcomm.server.http.protocol import with_request_timeout
from agentcomm.server.lifecycle.hub import Hub
from agentcomm.server.listeners import bind_http
from agentcomm.server.ws.asgi import FrontendSocketsFirst
from agentcomm.server.ws.close_codes import CLOSE_GOING_AWAY
from agentcomm.server.ws.protocol import HubWebSocketProtocol

log = logging.getLogger(__name__)

_STARTUP_POLL_SECONDS = 0.02


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the owner of the process decides on signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class RunningServer:
    def __init__(self, settings: Settings, bus: Bus, *, clock: Clock | None = None) -> None:
        self.settings = settings
        self.hub = Hub(settings, bus, clock=clock)
        self._uvicorn: _EmbeddedUvicorn | None = None
        self._serving: asyncio.Task[None] | None = None
        # The HTTP socket, bound with the gRPC port before anything else starts, until uvicorn
        # takes it over.
        self._listener: socket.socket | None = None

    @property
    def http_port(self) -> int:
        return self.hub.http_port

    @property
    def grpc_port(self) -> int:
        assert self.hub.grpc_port is not None, "the server is not started"
        return self.hub.grpc_port

    async def start(self) -> None:
        await self.start_hub()
        await self.start_http()

    def take_ports(self) -> None:
        """Binds the HTTP and gRPC ports (once); raises CannotListen, with the setting to
        change, when either is taken. Everything else starts only after this."""
        if self._listener is None:
            self._listener = bind_http(self.settings.host, self.settings.port)
            self.hub.http_port = self._listener.getsockname()[1]
        try:
            self.hub.take_grpc_port()
        except BaseException:
            self._release_listener()
            raise

    async def start_hub(self) -> None:
        """Both ports, then bus, consumers and gRPC: agents and brokers can connect, frontends
        not yet."""
        self.take_ports()
        try:
            await self.hub.start()
        except BaseException:
            self._release_listener()
            raise

    async def start_http(self) -> None:
        """Opens HTTP and the WebSocket; stops the hub again when that fails."""
        try:
            await self._start_http()
        except BaseException:
            await self.hub.stop()
            raise

    async def _start_http(self) -> None:
        settings = self.settings
        config = uvicorn.Config(
            FrontendSocketsFirst(
                create_app(self.hub.http_parts(), self.hub.frontend_parts()),
                self.hub.frontend_parts(),
            ),
            host=settings.host,
            port=settings.port,
            lifespan="off",
            log_level="warning",
            access_log=False,
            # uvicorn's websockets protocol, which also lets the hub write frames itself.
            ws=HubWebSocketProtocol,
            # uvicorn's httptools protocol, with a deadline on each request's head.
            http=with_request_timeout(settings.http_request_timeout),
            ws_max_size=settings.max_message_bytes,
            # Frames are small JSON: compressing each costs more CPU than it saves on
            # loopback and LAN links, and every compressing socket keeps zlib state in memory.
            ws_per_message_deflate=False,
            ws_ping_interval=20.0,
            ws_ping_timeout=20.0,
            timeout_graceful_shutdown=max(1, int(settings.shutdown_timeout / 2)),
        )
        # Bound by take_ports, not by uvicorn: a taken port is then a plain sentence, said
        # before anything started, rather than uvicorn's SystemExit from inside a task.
        self.take_ports()
        listener, self._listener = self._listener, None
        assert listener is not None
        server = _EmbeddedUvicorn(config)
        self._uvicorn = server
        self._serving = asyncio.create_task(server.serve(sockets=[listener]), name="uvicorn")
        async with asyncio.timeout(30):
            while not server.started:
                if self._serving.done():
                    with contextlib.suppress(SystemExit):
                        await self._serving
                    raise OSError(f"HTTP server on {settings.host}:{settings.port} did not start.")
                await asyncio.sleep(_STARTUP_POLL_SECONDS)

    def _release_listener(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    async def wait_closed(self) -> None:
        """Returns when uvicorn stops on its own (it should not, until stop())."""
        if self._serving is not None:
            with contextlib.suppress(SystemExit):
                await asyncio.shield(self._serving)

    async def stop(self, close_code: int = CLOSE_GOING_AWAY) -> None:
        self._release_listener()
        hub = self.hub
        hub.state.draining = True
        for link in list(hub.state.connections):
            link.close(close_code)
        links = [link.wait_closed() for link in list(hub.state.connections)]
        if links:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(2.0, self.settings.shutdown_timeout / 4)):
                    await asyncio.gather(*links)
        if self._uvicorn is not None and self._serving is not None:
            self._uvicorn.should_exit = True
            try:
                async with asyncio.timeout(self.settings.shutdown_timeout / 2):
                    await self._serving
            except (TimeoutError, SystemExit):
                self._uvicorn.force_exit = True
                self._serving.cancel()
                with contextlib.suppress(asyncio.CancelledError, SystemExit):
                    await self._serving
        await hub.stop()
