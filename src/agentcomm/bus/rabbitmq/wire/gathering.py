"""An AMQP connection that sends the frames of one event-loop turn in one system call.

aiormq writes every frame it sends (each publish, each ack) to the socket on its own, so every
one of them is a `send` system call and, over loopback, a trip through the kernel's TCP stack on
both ends. Under load most of a bus process's time went there. This connection hands aiormq a
stream writer that keeps what is written during one turn of the event loop and passes it to the
transport as one buffer at the start of the next turn: a turn that publishes forty messages and
acks forty deliveries makes one `send` instead of eighty.

Nothing waits longer for it than that one turn: the data is on its way before the loop sleeps.
Flow control is the transport's as before (`drain` still waits while the transport is paused),
and whatever is held is sent before an EOF or a close.

Frames aiormq sends without waiting for them to be written (publishes and acks, `wait=False`)
never reach `drain`, so nothing in aiormq holds them back when RabbitMQ stops reading (a
resource alarm, a stalled link): they would pile up in the transport without bound. The
connection therefore tells whether its transport is writable (below its high-water mark), and
a publisher waits for that before handing over a message, inside its own timeout.

It plugs in through aiormq's `transport_factory` (its documented seam for other transports) and
aio-pika's `connection_class`, so reconnecting connections get it on every reconnect too; the
factory opens each link to one of the bus's RabbitMQ nodes, tried in turn (`nodes.py`).

Every link also gets a `FastPath` (see `fastpath`), which reads what arrives before aiormq does
and writes the publishes and acks of the bus's hot path on the same gathering writer.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiormq.abc import AbstractChannel
from aiormq.connection import TransportFactory
from yarl import URL

from agentcomm.bus.rabbitmq.nodes import Node, Nodes, NodesRobustConnection, tls_context
from agentcomm.bus.rabbitmq.wire.fastpath import FastPath

# Held bytes beyond which `drain` sends at once rather than at the end of the turn, so that a
# burst of large messages does not pile up in memory before the transport sees it.
_SEND_AT_ONCE_BYTES = 256 * 1024


class FlowProtocol(asyncio.StreamReaderProtocol):
    """A stream protocol that shows whether its transport takes more data, as an Event.

    With a `fast_path`, what arrives goes through it first; it passes on to the stream reader
    (aiormq's) whatever it does not take itself."""

    def __init__(self, reader: asyncio.StreamReader, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(reader, loop=loop)
        # Set while the transport's buffer is below its high-water mark, and once the
        # connection is lost (whoever waits then finds the connection gone, not a hang).
        self.writable = asyncio.Event()
        self.writable.set()
        self.fast_path: FastPath | None = None

    def data_received(self, data: bytes) -> None:
        fast_path = self.fast_path
        if fast_path is None:
            super().data_received(data)
        else:
            fast_path.received(data)

    def pass_on(self, data: bytes) -> None:
        """Hands bytes the fast path did not take to the stream reader."""
        super().data_received(data)

    def pause_writing(self) -> None:
        super().pause_writing()
        self.writable.clear()

    def resume_writing(self) -> None:
        super().resume_writing()
        self.writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.fast_path is not None:
            self.fast_path.lost()
        super().connection_lost(exc)
        self.writable.set()


class GatheringWriter(asyncio.StreamWriter):
    """A stream writer that sends everything written during one loop turn in one write."""

    def __init__(
        self,
        transport: asyncio.WriteTransport,
        protocol: asyncio.StreamReaderProtocol,
        reader: asyncio.StreamReader,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(transport, protocol, reader, loop)
        self._loop = loop
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._send_scheduled = False
        self.writable = (
            protocol.writable if isinstance(protocol, FlowProtocol) else _always_writable()
        )

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._held.append(bytes(data))
        self._held_bytes += len(data)
        if not self._send_scheduled:
            self._send_scheduled = True
            self._loop.call_soon(self._send_held)

    def writelines(self, data: Any) -> None:
        for chunk in data:
            self.write(chunk)

    async def drain(self) -> None:
        if self._held_bytes >= _SEND_AT_ONCE_BYTES:
            self._send_held()
        await super().drain()

    def write_eof(self) -> None:
        self._send_held()
        super().write_eof()

    def close(self) -> None:
        self._send_held()
        super().close()

    def _send_held(self) -> None:
        self._send_scheduled = False
        if not self._held:
            return
        held = self._held[0] if len(self._held) == 1 else b"".join(self._held)
        self._held.clear()
        self._held_bytes = 0
        if not self.transport.is_closing():
            # (A closing transport drops writes anyway; the reader reports the broken link.)
            self.transport.write(held)


def _always_writable() -> asyncio.Event:
    writable = asyncio.Event()
    writable.set()
    return writable


class GatheringTransportFactory(TransportFactory):
    """Opens the TCP (or TLS, for amqps) link to one of `nodes`, with a GatheringWriter on it."""

    def __init__(self, nodes: Nodes) -> None:
        self.nodes = nodes
        # The writer and fast path of the link opened last: the ones the connection uses.
        self.writer: GatheringWriter | None = None
        self.fast_path: FastPath | None = None

    async def create(
        self, url: URL, **kwargs: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        ssl = await tls_context(url, kwargs)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(loop=loop)
        protocol = FlowProtocol(reader, loop)

        async def open_link(node: Node) -> asyncio.Transport:
            transport, _ = await loop.create_connection(
                lambda: protocol, host=node.host, port=node.port, ssl=ssl, **kwargs
            )
            return transport

        transport = await self.nodes.reach(open_link)
        writer = self.writer = GatheringWriter(transport, protocol, reader, loop)
        protocol.fast_path = self.fast_path = FastPath(writer.write, protocol.pass_on)
        return reader, writer


class GatheringRobustConnection(NodesRobustConnection):
    """aio-pika's reconnecting connection, on a GatheringTransportFactory."""

    transport_factory: GatheringTransportFactory

    def __init__(self, url: URL, loop: asyncio.AbstractEventLoop | None = None, **kwargs: Any):
        super().__init__(url, loop, **kwargs)
        # The aiormq connection of the current link, and that link's fast path.
        self._linked: tuple[object, FastPath] | None = None

    def transport_for(self, nodes: Nodes) -> GatheringTransportFactory:
        # Kept: the connection asks it for the current link's writer and fast path.
        self.transport_factory = GatheringTransportFactory(nodes)
        return self.transport_factory

    async def _on_connected(self) -> None:
        # Before aio-pika restores channels and consumers on the new link, which need it.
        transport, fast_path = self.transport, self.transport_factory.fast_path
        if transport is not None and fast_path is not None:
            self._linked = (transport.connection, fast_path)
        await super()._on_connected()

    def fast_path_for(self, channel: AbstractChannel) -> FastPath | None:
        """The fast path of `channel`'s link; None if that link is not the current one."""
        linked = self._linked
        if linked is None or channel.connection is not linked[0]:
            return None
        return linked[1]

    def writable(self) -> asyncio.Event | None:
        """Set while the current link's transport takes more data (None before a link)."""
        writer = self.transport_factory.writer
        return None if writer is None else writer.writable
