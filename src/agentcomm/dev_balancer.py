"""The small load balancer of `agentcomm dev --hubs N`: one address in front of the hubs.

It balances TCP connections, round robin, with no stickiness: each new connection — a
WebSocket (`/ws`, upgrade and all) or an HTTP client's connection (`/api`, the web UI) — goes to
the next hub that is ready, and its bytes are copied both ways until either side closes. A hub
is ready while its `GET /readyz` answers 200 (asked every `check_interval` seconds); a hub that
refuses a connection is skipped at once, without waiting for the next check. It is for trying a
cluster on one machine; production puts a real load balancer there (deploy/nginx.conf,
docs/operations.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 2.0
CHECK_TIMEOUT = 2.0
CHUNK = 65536


@dataclass
class Backend:
    host: str
    port: int
    ready: bool = True

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


class NoHubReady(ConnectionError):
    """Every hub refused the connection or is not ready."""


class DevBalancer:
    """Listens on `host:port` (0: any free port) and hands each connection to the next ready
    hub of `backends`."""

    def __init__(
        self,
        host: str,
        port: int,
        backends: Sequence[tuple[str, int]],
        *,
        check_interval: float = 1.0,
    ) -> None:
        if not backends:
            raise ValueError("A load balancer needs at least one hub.")
        self.host = host
        self.port = port
        self.backends = [Backend(h, p) for h, p in backends]
        self._check_interval = check_interval
        self._next = 0
        self._server: asyncio.Server | None = None
        self._checks: asyncio.Task[None] | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        self._checks = asyncio.create_task(self._check_forever(), name="dev-balancer-checks")

    async def stop(self) -> None:
        if self._checks is not None:
            self._checks.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checks
        if self._server is not None:
            self._server.close()
        for pipe in list(self._pipes):
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def pick(self) -> tuple[Backend, asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to the next ready hub, round robin; hubs not ready are tried last."""
        count = len(self.backends)
        start, self._next = self._next, (self._next + 1) % count
        order = [self.backends[(start + offset) % count] for offset in range(count)]
        order.sort(key=lambda backend: not backend.ready)
        for backend in order:
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    reader, writer = await asyncio.open_connection(backend.host, backend.port)
            except (OSError, TimeoutError):
                backend.ready = False
                continue
            return backend, reader, writer
        raise NoHubReady("No hub took the connection.")

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._pipes.add(task)
        try:
            try:
                _, hub_reader, hub_writer = await self.pick()
            except NoHubReady:
                log.warning("No hub is ready: a connection to the load balancer was closed")
                return
            try:
                await asyncio.gather(_copy(reader, hub_writer), _copy(hub_reader, writer))
            finally:
                hub_writer.close()
        finally:
            writer.close()
            self._pipes.discard(task)

    async def _check_forever(self) -> None:
        while True:
            await asyncio.gather(*(self._check(backend) for backend in self.backends))
            await asyncio.sleep(self._check_interval)

    async def _check(self, backend: Backend) -> None:
        was = backend.ready
        backend.ready = await _ready(backend)
        if was != backend.ready:
            log.info("Hub %s is %s", backend, "ready" if backend.ready else "not ready")


async def _ready(backend: Backend) -> bool:
    """Whether the hub answers `GET /readyz` with 200."""
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            reader, writer = await asyncio.open_connection(backend.host, backend.port)
            try:
                writer.write(
                    f"GET /readyz HTTP/1.1\r\nHost: {backend}\r\nConnection: close\r\n\r\n".encode()
                )
                status_line = await reader.readline()
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return False
    parts = status_line.split()
    return len(parts) >= 2 and parts[1] == b"200"


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copies until `reader` ends, then half-closes `writer` (the other way may go on)."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (OSError, ConnectionError):
        writer.close()
