"""A TCP proxy for fault injection: sits on a free port between a component and its peer
(RabbitMQ, the server's gRPC port) and can cut, stall or slow that link on command.

Modes, switchable at any time:

- `pass`: bytes flow both ways.
- `blackhole`: connections stay open (and new ones are accepted) but nothing is forwarded in
  either direction, like a partition where packets vanish; both ends only notice through their
  heartbeats or keepalives. Back in `pass`, what waited flows on, as after a healed partition.
- `slow`: every chunk is delayed by `delay` seconds before it is forwarded (in order).
- `refuse`: new connections are closed at once with a reset (the peer looks down).

`reset()` ends every open connection with a TCP reset on both sides, whatever the mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass, field
from typing import Literal

Mode = Literal["pass", "blackhole", "slow", "refuse"]

_CHUNK = 65536
_CONNECT_TIMEOUT = 5.0


@dataclass(eq=False)
class _Link:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


class TcpProxy:
    """Forwards 127.0.0.1:`port` to `target_host`:`target_port`.

    Use as `async with TcpProxy(host, port) as proxy:`; `proxy.port` is where to connect.
    """

    def __init__(self, target_host: str, target_port: int, *, listen_port: int = 0) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self._listen_port = listen_port
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.mode: Mode = "pass"
        self.delay = 0.0
        # Counters for the tests' own assertions.
        self.accepted = 0
        self.resets = 0

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self._listen_port)
        return self

    @property
    def port(self) -> int:
        assert self._server is not None, "the proxy is not started"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def open_connections(self) -> int:
        return len(self._links)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.reset()
        for link in list(self._links):
            for task in link.tasks:
                task.cancel()
        tasks = [task for link in list(self._links) for task in link.tasks]
        if tasks:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self._server.wait_closed()

    async def __aenter__(self) -> TcpProxy:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- faults ------------------------------------------------------------------------------

    def set_mode(self, mode: Mode, *, delay: float = 0.0) -> None:
        self.mode = mode
        self.delay = delay if mode == "slow" else 0.0
        if mode == "blackhole":
            self._flowing.clear()
        else:
            self._flowing.set()

    def passthrough(self) -> None:
        self.set_mode("pass")

    def blackhole(self) -> None:
        self.set_mode("blackhole")

    def slow(self, delay: float) -> None:
        self.set_mode("slow", delay=delay)

    def refuse(self) -> None:
        self.set_mode("refuse")

    def reset(self) -> int:
        """Resets every open connection (both sides); returns how many there were."""
        links = list(self._links)
        for link in links:
            self._drop(link)
        self.resets += len(links)
        return len(links)

    # -- forwarding --------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.mode == "refuse":
            _abort(writer)
            return
        link = _Link(client=writer)
        self._links.add(link)
        try:
            # In a black hole the connection is accepted but goes nowhere until it heals.
            await self._flowing.wait()
            try:
                async with asyncio.timeout(_CONNECT_TIMEOUT):
                    up_reader, up_writer = await asyncio.open_connection(
                        self.target_host, self.target_port
                    )
            except (OSError, TimeoutError):
                _abort(writer)
                return
            link.upstream = up_writer
            if link not in self._links:  # reset while connecting
                _abort(up_writer)
                return
            pumps = {
                asyncio.create_task(self._pump(reader, up_writer)),
                asyncio.create_task(self._pump(up_reader, writer)),
            }
            link.tasks |= pumps
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._drop(link)
            for task in link.tasks:
                task.cancel()
            await asyncio.gather(*link.tasks, return_exceptions=True)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while True:
                await self._flowing.wait()
                chunk = await source.read(_CHUNK)
                if not chunk:
                    return
                # What was read before a black hole opened is held back too.
                await self._flowing.wait()
                if self.delay > 0:
                    await asyncio.sleep(self.delay)
                    await self._flowing.wait()
                sink.write(chunk)
                await sink.drain()
        except (ConnectionError, OSError):
            return

    def _drop(self, link: _Link) -> None:
        if link not in self._links:
            return
        self._links.discard(link)
        _abort(link.client)
        if link.upstream is not None:
            _abort(link.upstream)


def _abort(writer: asyncio.StreamWriter) -> None:
    """Closes with a TCP reset (SO_LINGER 0) instead of an orderly FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport = writer.transport
    with contextlib.suppress(Exception):
        transport.abort()
