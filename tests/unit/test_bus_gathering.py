"""GatheringWriter: the frames of one event-loop turn reach the transport as one write."""

from __future__ import annotations

import asyncio

from agentcomm.bus.rabbitmq.wire.gathering import FlowProtocol, GatheringWriter


class RecordingTransport(asyncio.WriteTransport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.writes.append(b"<eof>")


def _writer() -> tuple[GatheringWriter, RecordingTransport]:
    loop = asyncio.get_running_loop()
    transport = RecordingTransport()
    reader = asyncio.StreamReader(loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    return GatheringWriter(transport, protocol, reader, loop), transport


async def test_frames_of_one_turn_go_out_in_one_write_in_order() -> None:
    writer, transport = _writer()
    writer.write(b"a")
    writer.write(b"b")
    writer.writelines([b"c", b"d"])
    assert transport.writes == []
    await asyncio.sleep(0)
    assert transport.writes == [b"abcd"]
    writer.write(b"e")
    await writer.drain()
    await asyncio.sleep(0)
    assert transport.writes == [b"abcd", b"e"]
    writer.close()


async def test_held_frames_go_out_before_eof_and_close() -> None:
    writer, transport = _writer()
    writer.write(b"last")
    writer.write_eof()
    assert transport.writes == [b"last", b"<eof>"]
    writer.write(b"bye")
    writer.close()
    assert transport.writes[-1] == b"bye"
    assert transport.closed


async def test_the_writer_shows_whether_its_transport_takes_more() -> None:
    loop = asyncio.get_running_loop()
    transport = RecordingTransport()
    reader = asyncio.StreamReader(loop=loop)
    protocol = FlowProtocol(reader, loop)
    protocol.connection_made(transport)
    writer = GatheringWriter(transport, protocol, reader, loop)
    assert writer.writable.is_set()
    protocol.pause_writing()  # the transport's buffer passed its high-water mark
    assert not writer.writable.is_set()
    protocol.resume_writing()
    assert writer.writable.is_set()
    protocol.pause_writing()
    protocol.connection_lost(None)  # whoever waits must wake and find the link gone
    assert writer.writable.is_set()
