"""ChannelAcks: nothing acked before it was handled, runs acked with one multiple ack."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import pamqp.frame
from aiormq.abc import AbstractChannel
from aiormq.exceptions import ChannelInvalidStateError

from agentcomm.bus.rabbitmq.wire.acks import ChannelAcks
from agentcomm.bus.rabbitmq.wire.fastpath import FastPath


class FakeChannel:
    def __init__(self, fail: bool = False) -> None:
        self.acks: list[tuple[int, bool]] = []
        self.fail = fail
        self.number = 1
        self.is_closed = False

    async def basic_ack(self, delivery_tag: int, multiple: bool = False, wait: bool = True) -> None:
        if self.fail:
            raise ChannelInvalidStateError("closed")
        self.acks.append((delivery_tag, multiple))


def _acks(channel: FakeChannel, tags: range) -> ChannelAcks:
    acks = ChannelAcks(cast(AbstractChannel, channel), "q", (ChannelInvalidStateError,))
    for tag in tags:
        acks.delivered(tag)
    return acks


async def _settle(acks: ChannelAcks) -> None:
    async with asyncio.timeout(5):
        await asyncio.sleep(0)
        await acks.flush()


def acked(channel: FakeChannel) -> set[int]:
    """Every tag the recorded frames ack, given which tags were delivered (1..10 here)."""
    done: set[int] = set()
    for tag, multiple in channel.acks:
        done |= set(range(1, tag + 1)) if multiple else {tag}
    return done


async def test_a_run_handled_in_one_turn_is_acked_with_one_frame() -> None:
    channel = FakeChannel()
    acks = _acks(channel, range(1, 6))
    for tag in range(1, 6):
        acks.handled(tag)
    await _settle(acks)
    assert channel.acks == [(5, True)]


async def test_handled_behind_a_running_delivery_are_acked_alone() -> None:
    channel = FakeChannel()
    acks = _acks(channel, range(1, 5))
    acks.handled(2)
    acks.handled(3)
    await _settle(acks)
    # 1 is still being handled: a multiple ack must not cover it.
    assert channel.acks == [(2, False), (3, False)]
    assert 1 not in acked(channel)
    acks.handled(1)
    await _settle(acks)
    assert channel.acks[-1] == (1, True)
    acks.handled(4)
    await _settle(acks)
    assert acked(channel) == {1, 2, 3, 4}


async def test_a_multiple_ack_never_passes_an_unsettled_delivery() -> None:
    channel = FakeChannel()
    acks = _acks(channel, range(1, 11))
    for tag in (1, 2, 4, 5, 7, 9, 10):
        acks.handled(tag)
    acks.settled(6)  # nacked by a frame of its own
    await _settle(acks)
    assert acked(channel).isdisjoint({3, 6, 8})
    assert acked(channel) == {1, 2, 4, 5, 7, 9, 10}


async def test_settled_deliveries_are_passed_over_without_a_frame() -> None:
    channel = FakeChannel()
    acks = _acks(channel, range(1, 4))
    acks.settled(1)
    acks.handled(2)
    acks.settled(3)
    await _settle(acks)
    assert channel.acks == [(2, True)]


async def test_a_closed_channel_is_logged_not_raised(caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="agentcomm.bus.rabbitmq.wire.acks")
    channel = FakeChannel(fail=True)
    acks = _acks(channel, range(1, 3))
    acks.handled(1)
    await _settle(acks)
    assert channel.acks == []
    assert "will deliver them again" in caplog.text


async def test_one_unsettled_delivery_does_not_keep_the_ones_behind_it() -> None:
    # An agent holding one message (or a long handler) must not make the tracker grow with
    # every delivery after it.
    channel = FakeChannel()
    acks = _acks(channel, range(1, 1002))
    for tag in range(2, 1002):
        if tag % 2:
            acks.handled(tag)
        else:
            acks.settled(tag)
    await _settle(acks)
    assert len(acks) == 1
    assert 1 not in acked(channel)
    acks.handled(1)
    await _settle(acks)
    assert len(acks) == 0
    assert channel.acks[-1] == (1, True)


async def test_a_multiple_ack_after_alone_acks_still_stops_at_the_unsettled() -> None:
    channel = FakeChannel()
    acks = _acks(channel, range(1, 8))
    acks.handled(2)
    acks.handled(4)
    await _settle(acks)
    acks.handled(1)
    acks.handled(5)
    await _settle(acks)
    # 3 is still being handled: the run at the head ends before it.
    assert 3 not in acked(channel)
    assert acked(channel) == {1, 2, 4, 5}
    assert len(acks) == 3  # 3, 6 and 7
    acks.handled(3)
    acks.handled(6)
    await _settle(acks)
    assert acked(channel) == {1, 2, 3, 4, 5, 6}
    assert channel.acks[-1] == (6, True)
    assert len(acks) == 1


async def test_handled_twice_is_acked_once() -> None:
    channel = FakeChannel()
    acks = _acks(channel, range(1, 3))
    acks.handled(2)
    await _settle(acks)
    acks.handled(2)
    await _settle(acks)
    assert channel.acks == [(2, False)]


async def test_on_a_fast_path_the_acks_are_written_as_frames() -> None:
    written: list[bytes] = []
    fast_path = FastPath(written.append, lambda data: None)
    channel = FakeChannel()
    channel.number = 5
    acks = ChannelAcks(cast(AbstractChannel, channel), "q", (ChannelInvalidStateError,), fast_path)
    for tag in range(1, 5):
        acks.delivered(tag)
    for tag in (1, 2, 4):
        acks.handled(tag)
    await _settle(acks)
    assert channel.acks == []  # nothing through aiormq
    frames = []
    data = b"".join(written)
    while data:
        consumed, number, frame = pamqp.frame.unmarshal(data)
        frames.append((number, frame.delivery_tag, frame.multiple))
        data = data[consumed:]
    assert frames == [(5, 2, True), (5, 4, False)]

    channel.is_closed = True
    acks.handled(3)
    await _settle(acks)
    assert len(written) == 2  # a closed channel gets no ack (RabbitMQ has the delivery back)
