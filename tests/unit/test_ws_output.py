"""Frames out to a socket: framed once, written together per loop turn, in order; held while
the peer does not read, and a peer that stays behind is closed with 4008."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable

import pytest

from agentcomm.server.ws.close_codes import CLOSE_NORMAL, CLOSE_TOO_SLOW
from agentcomm.server.ws.output import OutputScheduler, SocketLink, text_frame


class FakeOutput:
    """A transport that records each write."""

    def __init__(self) -> None:
        self.on_writable: Callable[[], None] | None = None
        self.writes: list[bytes] = []
        self.output_open = True
        self.output_paused = False

    def write_output(self, data: bytes) -> None:
        self.writes.append(data)

    def resume(self) -> None:
        self.output_paused = False
        if self.on_writable is not None:
            self.on_writable()


def parse_text_frames(data: bytes) -> list[bytes]:
    """Splits unmasked text frames (RFC 6455 §5.2) back into payloads."""
    payloads = []
    offset = 0
    while offset < len(data):
        assert data[offset] == 0x81, "FIN + text opcode"
        length = data[offset + 1]
        assert length & 0x80 == 0, "a server never masks"
        offset += 2
        if length == 126:
            (length,) = struct.unpack_from("!H", data, offset)
            offset += 2
        elif length == 127:
            (length,) = struct.unpack_from("!Q", data, offset)
            offset += 8
        payloads.append(data[offset : offset + length])
        offset += length
    return payloads


async def next_turn() -> None:
    await asyncio.sleep(0)
    await asyncio.sleep(0)


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
def test_text_frame_length_encodings_round_trip(size: int) -> None:
    payload = b"x" * size
    assert parse_text_frames(text_frame(payload)) == [payload]


async def test_frames_queued_in_one_turn_leave_in_one_write_in_order() -> None:
    output = FakeOutput()
    link = SocketLink(output, OutputScheduler(), max_frames=16)
    frames = [b'{"routing_status":"pending"}', b'{"routing_status":"routed"}', b'{"n":3}']
    for frame in frames:
        link.send_frame(frame)
    assert output.writes == []  # nothing written before the turn ends
    await next_turn()
    assert len(output.writes) == 1
    assert parse_text_frames(output.writes[0]) == frames
    link.send_frame(b'{"message_type":"REPLY"}')
    await next_turn()
    assert len(output.writes) == 2
    assert parse_text_frames(output.writes[1]) == [b'{"message_type":"REPLY"}']


async def test_a_broadcast_is_framed_once_for_every_socket() -> None:
    scheduler = OutputScheduler()
    outputs = [FakeOutput() for _ in range(3)]
    links = [SocketLink(output, scheduler, max_frames=16) for output in outputs]
    delta = b'{"message_type":"AGENT_STATUS_UPDATE","is_full_update":false}'
    for link in links:
        link.send_frame(delta)
    await next_turn()
    written = [output.writes[0] for output in outputs]
    assert all(data is written[0] for data in written)
    assert parse_text_frames(written[0]) == [delta]


async def test_frames_wait_while_the_peer_does_not_read_and_follow_in_order() -> None:
    output = FakeOutput()
    link = SocketLink(output, OutputScheduler(), max_frames=16)
    output.output_paused = True
    link.send_frame(b"1")
    link.send_frame(b"2")
    await next_turn()
    assert output.writes == []
    output.resume()
    link.send_frame(b"3")
    await next_turn()
    assert [parse_text_frames(data) for data in output.writes] == [[b"1", b"2"], [b"3"]]


async def test_a_peer_that_stays_behind_is_closed_too_slow_and_its_frames_dropped() -> None:
    output = FakeOutput()
    link = SocketLink(output, OutputScheduler(), max_frames=4)
    output.output_paused = True
    woken: list[bool] = []
    link.waking(lambda: woken.append(True))
    for index in range(10):
        link.send_frame(str(index).encode())
    assert link.close_code == CLOSE_TOO_SLOW
    assert woken == [True]
    output.resume()
    await next_turn()
    assert output.writes == []


async def test_frames_queued_before_a_close_still_go_out_first() -> None:
    output = FakeOutput()
    link = SocketLink(output, OutputScheduler(), max_frames=16)
    link.send_frame(b"last words")
    link.close(CLOSE_NORMAL)
    link.send_frame(b"too late")
    link.flush(even_if_paused=True)
    assert [parse_text_frames(data) for data in output.writes] == [[b"last words"]]
    await next_turn()
    assert len(output.writes) == 1


async def test_wait_closed_returns_once_the_close_went_out() -> None:
    link = SocketLink(FakeOutput(), OutputScheduler(), max_frames=16)
    waiting = asyncio.create_task(link.wait_closed())
    await next_turn()
    assert not waiting.done()
    link.mark_closed()
    await asyncio.wait_for(waiting, timeout=5)
    await asyncio.wait_for(link.wait_closed(), timeout=5)


async def test_a_peer_that_stays_behind_by_bytes_is_closed_before_its_frame_count() -> None:
    output = FakeOutput()
    scheduler = OutputScheduler()
    link = SocketLink(output, scheduler, max_frames=1024, max_bytes=10_000)
    output.output_paused = True
    big = b"x" * 3000
    for _ in range(3):
        link.send_frame(big)
    assert link.close_code is None
    assert link.queued_bytes == scheduler.queued_bytes > 9000
    link.send_frame(big)
    assert link.close_code == CLOSE_TOO_SLOW
    # Dropped at once, and given back to the hub's budget.
    assert link.queued_bytes == scheduler.queued_bytes == 0


async def test_one_frame_larger_than_the_bound_still_goes_into_an_empty_queue() -> None:
    link = SocketLink(FakeOutput(), OutputScheduler(), max_frames=16, max_bytes=1000)
    link.send_frame(b"x" * 5000)
    assert link.close_code is None


async def test_the_hub_wide_budget_closes_the_socket_holding_the_most() -> None:
    scheduler = OutputScheduler(total_bytes=20_000)
    outputs = [FakeOutput() for _ in range(3)]
    links = [SocketLink(output, scheduler, max_frames=1024, max_bytes=15_000) for output in outputs]
    for output in outputs:
        output.output_paused = True
    for _ in range(3):
        links[0].send_frame(b"a" * 3000)  # 9 KB waiting: the greediest
    links[1].send_frame(b"b" * 3000)
    assert all(link.close_code is None for link in links)
    for _ in range(4):
        links[2].send_frame(b"c" * 2000)  # past 20 KB in all
    assert links[0].close_code == CLOSE_TOO_SLOW
    assert links[1].close_code is None
    assert links[2].close_code is None
    assert scheduler.queued_bytes == links[1].queued_bytes + links[2].queued_bytes <= 20_000


async def test_written_frames_leave_the_budget() -> None:
    scheduler = OutputScheduler(total_bytes=1_000_000)
    link = SocketLink(FakeOutput(), scheduler, max_frames=16, max_bytes=100_000)
    link.send_frame(b"x" * 5000)
    assert scheduler.queued_bytes > 5000
    await next_turn()
    assert scheduler.queued_bytes == link.queued_bytes == 0


class Pages:
    """A frame source of `count` frames that records how many were asked for."""

    def __init__(self, count: int, name: bytes = b"p") -> None:
        self.count = count
        self.name = name
        self.taken = 0

    def next_frame(self) -> bytes | None:
        if self.taken == self.count:
            return None
        self.taken += 1
        return self.name + str(self.taken).encode()


async def test_a_source_is_read_as_the_socket_drains_and_not_while_it_does_not() -> None:
    output = FakeOutput()
    link = SocketLink(output, OutputScheduler(), max_frames=16, max_bytes=10_000)
    link.send_frame(b"before")
    pages = Pages(1000)
    link.send_frames(pages)
    link.send_frame(b"after")
    assert pages.taken == 1  # the first page at once, in order with its neighbours
    output.output_paused = True
    for _ in range(5):
        await next_turn()
    assert pages.taken == 1  # a peer that does not read holds one page
    output.resume()
    for _ in range(20):
        await next_turn()
    frames = [frame for data in output.writes for frame in parse_text_frames(data)]
    assert frames[:3] == [b"before", b"p1", b"after"]
    assert frames[3:6] == [b"p2", b"p3", b"p4"]
    assert link.close_code is None


async def test_a_new_source_replaces_one_still_being_read() -> None:
    output = FakeOutput()
    link = SocketLink(output, OutputScheduler(), max_frames=16, max_bytes=10_000)
    output.output_paused = True
    first, second = Pages(100, b"a"), Pages(2, b"b")
    link.send_frames(first)
    link.send_frames(second)
    output.resume()
    for _ in range(10):
        await next_turn()
    frames = [frame for data in output.writes for frame in parse_text_frames(data)]
    assert frames == [b"a1", b"b1", b"b2"]
    assert first.taken == 1
