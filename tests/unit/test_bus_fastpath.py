"""FastPath: the hot frames are taken, everything else reaches aiormq byte for byte.

Frames are made and read back with pamqp, the codec aiormq itself uses, so what is checked
here is agreement with it on the wire.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any, NamedTuple, cast

import pamqp.frame
import pytest
from aiormq.abc import AbstractChannel
from aiormq.exceptions import ChannelInvalidStateError
from pamqp import commands
from pamqp.body import ContentBody
from pamqp.header import ContentHeader
from pamqp.heartbeat import Heartbeat

from agentcomm.bus.rabbitmq.wire import fastpath
from agentcomm.bus.rabbitmq.wire.base import LinkLost, Refused, Returned
from agentcomm.bus.rabbitmq.wire.fastpath import FastPath

PUBLISH_CHANNEL = 1
CONSUME_CHANNEL = 2
OTHER_CHANNEL = 3


class Delivered(NamedTuple):
    channel: AbstractChannel
    delivery_tag: int
    redelivered: bool
    properties: commands.Basic.Properties
    body: bytes


class FakeChannel:
    def __init__(self, number: int) -> None:
        self.number = number
        self.is_closed = False


class Link:
    """A FastPath with what it writes and what it passes on recorded."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.passed: list[bytes] = []
        self.delivered: list[Delivered] = []
        self.path = FastPath(self.written.append, self.passed.append)

    def feed(self, data: bytes, chunks: int = 1, seed: int = 0) -> None:
        """Feeds `data` cut at `chunks - 1` random places."""
        cuts = sorted(random.Random(seed).sample(range(1, len(data)), chunks - 1))
        for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True):
            self.path.received(data[start:end])

    def took(self, *delivery: Any) -> None:
        self.delivered.append(Delivered(*delivery))

    def consume(self, number: int = CONSUME_CHANNEL, tag: str = "ctag-1") -> FakeChannel:
        channel = FakeChannel(number)
        self.path.consume(cast(AbstractChannel, channel), tag, self.took)
        return channel


def _method(frame: Any, channel: int) -> bytes:
    return pamqp.frame.marshal(frame, channel)


def _channel_close(channel: int) -> bytes:
    """RabbitMQ closing a channel, as for a refused Basic.Publish."""
    return _method(commands.Channel.Close(406, "PRECONDITION_FAILED", 60, 40), channel)


def _content(body: bytes, channel: int, frame_max: int = 0, **properties: Any) -> bytes:
    header = ContentHeader(0, len(body), commands.Basic.Properties(**properties))
    frames = [pamqp.frame.marshal(header, channel)]
    step = frame_max - 8 if frame_max else max(len(body), 1)
    for start in range(0, len(body), step):
        frames.append(pamqp.frame.marshal(ContentBody(body[start : start + step]), channel))
    return b"".join(frames)


def _delivery(tag: int, body: bytes, consumer_tag: str = "ctag-1", **properties: Any) -> bytes:
    method = commands.Basic.Deliver(
        consumer_tag=consumer_tag, delivery_tag=tag, routing_key="q", redelivered=tag % 2 == 0
    )
    return _method(method, CONSUME_CHANNEL) + _content(body, CONSUME_CHANNEL, **properties)


def _unmarshal_all(data: bytes) -> list[tuple[int, Any]]:
    frames = []
    while data:
        consumed, channel, frame = pamqp.frame.unmarshal(data)
        frames.append((channel, frame))
        data = data[consumed:]
    return frames


async def test_deliveries_are_taken_and_other_frames_pass_on_unchanged_at_any_cut() -> None:
    others = [
        _method(commands.Basic.QosOk(), OTHER_CHANNEL),
        _method(commands.Basic.Deliver("ctag-1", 7, False, "", "q"), OTHER_CHANNEL)
        + _content(b"not ours", OTHER_CHANNEL),
        _method(commands.Basic.Deliver("ctag-unknown", 8, False, "", "q"), CONSUME_CHANNEL)
        + _content(b"not ours either", CONSUME_CHANNEL),
        _method(commands.Basic.ConsumeOk("ctag-1"), CONSUME_CHANNEL),
        pamqp.frame.marshal(Heartbeat(), 0),
    ]
    ours = [
        _delivery(1, b'{"n": 1}', message_id="m1", headers={"agentcomm-attempt": 2}),
        _delivery(2, b""),
        _delivery(3, bytes(range(256)) * 3),
    ]
    stream = ours[0] + others[0] + others[1] + ours[1] + others[2] + others[3] + ours[2]
    stream += others[4]
    for chunks in (1, 2, 3, 7, 40):
        for seed in range(5):
            link = Link()
            link.consume()
            link.feed(stream, chunks, seed)
            assert b"".join(link.passed) == b"".join(others)
            assert [d.delivery_tag for d in link.delivered] == [1, 2, 3]
            first, second, third = link.delivered
            assert first.body == b'{"n": 1}'
            assert first.properties.message_id == "m1"
            assert first.properties.headers == {"agentcomm-attempt": 2}
            assert (first.redelivered, second.redelivered) == (False, True)
            assert second.body == b""
            assert third.body == bytes(range(256)) * 3
            assert all(d.channel.number == CONSUME_CHANNEL for d in link.delivered)


async def test_a_body_in_many_frames_is_put_together() -> None:
    link = Link()
    link.consume()
    body = b"x" * 1000 + b"y" * 1000
    method = commands.Basic.Deliver("ctag-1", 1, False, "", "q")
    link.feed(_method(method, CONSUME_CHANNEL) + _content(body, CONSUME_CHANNEL, frame_max=300))
    assert [d.body for d in link.delivered] == [body]
    assert link.passed == []


async def test_a_consumer_that_fails_leaves_the_link_reading(caplog: Any) -> None:
    link = Link()
    channel = FakeChannel(CONSUME_CHANNEL)
    taken: list[int] = []

    def fussy(_channel: AbstractChannel, delivery_tag: int, *_rest: Any) -> None:
        if delivery_tag == 1:
            raise RuntimeError("boom")
        taken.append(delivery_tag)

    link.path.consume(cast(AbstractChannel, channel), "ctag-1", fussy)
    link.feed(_delivery(1, b"a") + _delivery(2, b"b"))
    assert taken == [2]
    assert "failed to take delivery 1" in caplog.text


async def test_a_forgotten_consumer_and_a_closed_channel_pass_deliveries_on() -> None:
    link = Link()
    channel = link.consume()
    link.path.forget_consumer(cast(AbstractChannel, channel), "ctag-1")
    link.feed(_delivery(1, b"a"))
    assert link.delivered == []
    assert b"".join(link.passed) == _delivery(1, b"a")

    link = Link()
    link.consume()
    close = _channel_close(CONSUME_CHANNEL)
    link.feed(close + _delivery(2, b"b"))
    assert link.delivered == []
    assert b"".join(link.passed) == close + _delivery(2, b"b")


async def test_a_refused_protocol_header_and_broken_frames_go_to_aiormq_as_they_are() -> None:
    link = Link()
    link.consume()
    refusal = b"AMQP\x00\x00\x09\x01"
    link.feed(refusal + _delivery(1, b"a"))
    assert b"".join(link.passed) == refusal + _delivery(1, b"a")
    assert link.delivered == []

    link = Link()
    link.consume()
    broken = bytearray(_delivery(1, b"a"))
    broken[len(_method(commands.Basic.Deliver("ctag-1", 1, False, "", "q"), 2)) - 1] = 0
    link.feed(bytes(broken) + _delivery(2, b"b"))
    assert b"".join(link.passed) == bytes(broken) + _delivery(2, b"b")
    assert link.delivered == []


async def test_aiormq_hears_a_heartbeat_while_every_frame_is_taken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fastpath, "_KEEPALIVE_INTERVAL", 0.01)
    link = Link()
    link.consume()
    link.feed(_delivery(1, b"a"))
    await asyncio.sleep(0.05)
    link.feed(_delivery(2, b"b"))
    assert link.passed == [pamqp.frame.marshal(Heartbeat(), 0)]
    assert len(link.delivered) == 2


# -- publishing ---------------------------------------------------------------------------------


def _publisher(link: Link, frame_max: int = 131072) -> Any:
    channel = FakeChannel(PUBLISH_CHANNEL)
    return link.path.publisher(cast(AbstractChannel, channel), frame_max), channel


def _confirm(method: Any) -> bytes:
    return _method(method, PUBLISH_CHANNEL)


async def test_a_publish_is_what_pamqp_reads_as_publish_header_and_body() -> None:
    link = Link()
    publisher, _ = _publisher(link, frame_max=4096)
    body = bytes(range(256)) * 40
    properties = commands.Basic.Properties(
        message_id="m1", delivery_mode=2, content_type="application/json", headers={"a": 1}
    )
    publisher.publish("agent_queue_echo", body, properties, True)
    publisher.publish("other", b"", commands.Basic.Properties(message_id="m2"), False)
    publisher.publish("", b"{}", commands.Basic.Properties(), False, "agentcomm.presence")
    assert len(link.written) == 3
    frames = _unmarshal_all(link.written[0])
    assert {channel for channel, _ in frames} == {PUBLISH_CHANNEL}
    method, header, *bodies = (frame for _, frame in frames)
    assert isinstance(method, commands.Basic.Publish)
    assert (method.exchange, method.routing_key, method.mandatory) == ("", "agent_queue_echo", True)
    assert isinstance(header, ContentHeader)
    assert header.body_size == len(body)
    assert header.properties == properties
    assert len(bodies) == 3
    assert all(len(part.value) <= 4096 - 8 for part in bodies)
    assert b"".join(part.value for part in bodies) == body
    method, header = (frame for _, frame in _unmarshal_all(link.written[1]))
    assert (method.routing_key, method.mandatory, header.body_size) == ("other", False, 0)
    method, header, _ = (frame for _, frame in _unmarshal_all(link.written[2]))
    assert (method.exchange, method.routing_key, method.mandatory) == (
        "agentcomm.presence",
        "",
        False,
    )
    assert header.body_size == 2


async def test_confirms_settle_their_publishes_one_by_one_or_in_runs() -> None:
    link = Link()
    publisher, _ = _publisher(link)
    futures = [
        publisher.publish("q", b"x", commands.Basic.Properties(message_id=f"m{n}"), True)
        for n in range(1, 7)
    ]
    link.feed(_confirm(commands.Basic.Ack(delivery_tag=2)))
    assert [f.done() for f in futures] == [False, True, False, False, False, False]
    link.feed(_confirm(commands.Basic.Ack(delivery_tag=4, multiple=True)))
    assert [f.done() for f in futures] == [True] * 4 + [False, False]
    link.feed(_confirm(commands.Basic.Nack(delivery_tag=6, multiple=True)))
    assert [f.exception() is None for f in futures[:4]] == [True] * 4
    assert all(isinstance(f.exception(), Refused) for f in futures[4:])
    assert link.passed == []


async def test_a_returned_mandatory_publish_fails_when_its_confirm_comes() -> None:
    link = Link()
    publisher, _ = _publisher(link)
    kept = publisher.publish("q", b"x", commands.Basic.Properties(message_id="kept"), True)
    lost = publisher.publish("nowhere", b"y", commands.Basic.Properties(message_id="lost"), True)
    returned = _confirm(commands.Basic.Return(312, "NO_ROUTE", "", "nowhere"))
    returned += _content(b"y", PUBLISH_CHANNEL, message_id="lost")
    link.feed(returned, chunks=4)
    assert not lost.done()
    link.feed(_confirm(commands.Basic.Ack(delivery_tag=2)))
    with pytest.raises(Returned, match="312 NO_ROUTE"):
        lost.result()
    link.feed(_confirm(commands.Basic.Ack(delivery_tag=1)))
    assert kept.result() is None


async def test_a_publish_given_up_on_is_confirmed_quietly() -> None:
    link = Link()
    publisher, _ = _publisher(link)
    future = publisher.publish("q", b"x", commands.Basic.Properties(), False)
    future.cancel()
    link.feed(_confirm(commands.Basic.Ack(delivery_tag=1)))
    assert future.cancelled()


async def test_a_closed_channel_or_link_fails_what_was_not_confirmed() -> None:
    link = Link()
    publisher, _ = _publisher(link)
    waiting = publisher.publish("q", b"x", commands.Basic.Properties(), False)
    close = _channel_close(PUBLISH_CHANNEL)
    link.feed(close)
    with pytest.raises(LinkLost):
        waiting.result()
    assert link.passed == [close]
    with pytest.raises(ChannelInvalidStateError):
        publisher.publish("q", b"x", commands.Basic.Properties(), False)
    # aiormq has not marked the channel closed yet; the fast path still knows it is gone.
    with pytest.raises(ChannelInvalidStateError):
        link.path.publisher(publisher.channel, 131072)

    link = Link()
    publisher, _ = _publisher(link)
    waiting = publisher.publish("q", b"x", commands.Basic.Properties(), False)
    link.path.lost()
    with pytest.raises(LinkLost):
        waiting.result()
    with pytest.raises(ChannelInvalidStateError):
        _publisher(link)


async def test_a_publisher_on_a_channel_aiormq_closed_refuses_before_writing() -> None:
    link = Link()
    publisher, channel = _publisher(link)
    channel.is_closed = True
    with pytest.raises(ChannelInvalidStateError):
        publisher.publish("q", b"x", commands.Basic.Properties(), False)
    assert link.written == []


async def test_acks_are_what_pamqp_reads_as_basic_ack() -> None:
    link = Link()
    channel = cast(AbstractChannel, link.consume())
    link.path.ack(channel, 41, multiple=True)
    link.path.ack(channel, 42, multiple=False)
    frames = _unmarshal_all(b"".join(link.written))
    assert [(number, f.delivery_tag, f.multiple) for number, f in frames] == [
        (CONSUME_CHANNEL, 41, True),
        (CONSUME_CHANNEL, 42, False),
    ]


async def test_no_ack_is_written_for_a_channel_that_was_closed() -> None:
    link = Link()
    channel = link.consume()
    # RabbitMQ closed the channel; aiormq has not marked it closed yet, and the number may
    # soon belong to a new channel, on which this tag would be wrong.
    link.feed(_channel_close(CONSUME_CHANNEL))
    with pytest.raises(ChannelInvalidStateError):
        link.path.ack(cast(AbstractChannel, channel), 41, multiple=False)
    closed_by_aiormq = link.consume(number=OTHER_CHANNEL)
    closed_by_aiormq.is_closed = True
    with pytest.raises(ChannelInvalidStateError):
        link.path.ack(cast(AbstractChannel, closed_by_aiormq), 1, multiple=False)
    assert link.written == []


async def test_an_empty_body_on_a_link_without_a_frame_limit_is_a_header_alone() -> None:
    link = Link()
    publisher, _ = _publisher(link, frame_max=0)
    publisher.publish("q", b"", commands.Basic.Properties(message_id="m1"), False)
    kinds = [type(frame).__name__ for _, frame in _unmarshal_all(b"".join(link.written))]
    assert kinds == ["Publish", "ContentHeader"]


async def test_a_mandatory_publish_without_an_id_is_refused_before_writing() -> None:
    # Its return could not be matched to it: it would pass for stored.
    link = Link()
    publisher, _ = _publisher(link)
    with pytest.raises(ValueError, match="message_id"):
        publisher.publish("q", b"x", commands.Basic.Properties(), True)
    assert link.written == []


async def test_asked_twice_for_one_channel_the_publisher_keeps_its_count() -> None:
    link = Link()
    publisher, channel = _publisher(link)
    first = publisher.publish("q", b"x", commands.Basic.Properties(message_id="a"), False)
    again = link.path.publisher(cast(AbstractChannel, channel), 131072)
    assert again is publisher
    second = again.publish("q", b"y", commands.Basic.Properties(message_id="b"), False)
    link.feed(_confirm(commands.Basic.Ack(delivery_tag=2)))
    # Tag 2 is the second publish: the first one is still waiting for its confirm.
    assert second.done()
    assert second.exception() is None
    assert not first.done()


async def test_forgetting_a_consumer_of_an_old_channel_leaves_the_new_ones() -> None:
    link = Link()
    old = link.consume()
    link.feed(_channel_close(CONSUME_CHANNEL))
    link.consume()  # a new channel with the same number, and the same tag
    link.path.forget_consumer(cast(AbstractChannel, old), "ctag-1")
    link.feed(_delivery(1, b"a"))
    assert [d.body for d in link.delivered] == [b"a"]
