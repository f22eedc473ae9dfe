"""The Bus contract for broadcasts (bus/base.py: broadcast, listen, on_reconnect), checked the
same way on the in-process bus and on RabbitMQ."""

from __future__ import annotations

import asyncio
import logging

import pytest

from agentcomm.bus.base import Bus, BusClosed, Delivery
from tests.contract.conftest import WAIT, BusBackend, Collector, bounded, holds_for, wait_until
from tests.integration.test_rabbitmq_bus import rabbitmqctl


def _ids(count: int, prefix: str = "b") -> list[str | None]:
    return [f"{prefix}{number:03d}" for number in range(count)]


async def _broadcast_all(bus: Bus, topic: str, ids: list[str | None]) -> None:
    for message_id in ids:
        await bus.broadcast(topic, f'{{"id": "{message_id}"}}'.encode(), message_id=message_id)


@bounded
async def test_every_listener_gets_every_broadcast_once_in_order(backend: BusBackend) -> None:
    sender = await backend.new_bus()
    other = await backend.new_bus()
    listeners = [Collector(), Collector(), Collector()]
    await sender.listen("presence", listeners[0].handle)
    await sender.listen("presence", listeners[1].handle)
    await other.listen("presence", listeners[2].handle)
    ids = _ids(30)

    await _broadcast_all(sender, "presence", ids)

    for listener in listeners:
        await listener.wait_for(len(ids))
    assert await holds_for(lambda: all(len(got.items) == len(ids) for got in listeners), 0.3)
    for listener in listeners:
        assert listener.ids == ids
        first = listener.items[0]
        assert first.queue == "presence"
        assert first.body == b'{"id": "b000"}'
        assert (first.redelivered, first.attempt) == (False, 1)


@bounded
async def test_a_broadcast_without_message_id_gets_one(bus: Bus) -> None:
    got = Collector()
    await bus.listen("presence", got.handle)

    await bus.broadcast("presence", b"{}")
    await bus.broadcast("presence", b"{}")

    first, second = await got.wait_for(2)
    assert first.message_id
    assert second.message_id
    assert first.message_id != second.message_id


@bounded
async def test_topics_are_apart(bus: Bus) -> None:
    presence, hubs = Collector(), Collector()
    await bus.listen("presence", presence.handle)
    await bus.listen("hubs", hubs.handle)

    await bus.broadcast("presence", b"{}", message_id="p")
    await bus.broadcast("hubs", b"{}", message_id="h")

    assert (await presence.wait_for(1))[0].message_id == "p"
    assert (await hubs.wait_for(1))[0].message_id == "h"
    assert await holds_for(lambda: len(presence.items) == len(hubs.items) == 1, 0.3)


@bounded
async def test_a_listener_added_later_gets_only_later_broadcasts(backend: BusBackend) -> None:
    bus = await backend.new_bus()
    early = Collector()
    await bus.listen("presence", early.handle)
    await _broadcast_all(bus, "presence", ["before"])
    await early.wait_for(1)

    late = Collector()
    await (await backend.new_bus()).listen("presence", late.handle)
    await _broadcast_all(bus, "presence", ["after"])

    await early.wait_for(2)
    await late.wait_for(1)
    assert early.ids == ["before", "after"]
    assert await holds_for(lambda: late.ids == ["after"], 0.3)


@bounded
async def test_a_cancelled_listener_gets_nothing_more(backend: BusBackend) -> None:
    bus = await backend.new_bus()
    staying, leaving = Collector(), Collector()
    await bus.listen("presence", staying.handle)
    subscription = await bus.listen("presence", leaving.handle)
    await _broadcast_all(bus, "presence", ["before"])
    await leaving.wait_for(1)

    await subscription.cancel()
    await subscription.cancel()  # idempotent
    await _broadcast_all(bus, "presence", ["after"])

    await staying.wait_for(2)
    assert await holds_for(lambda: leaving.ids == ["before"], 0.3)


@bounded
async def test_a_broadcast_nobody_listens_to_is_fine(bus: Bus) -> None:
    await bus.broadcast("nobody-listens", b"{}", message_id="unheard")
    await bus.broadcast("nobody-listens", b"{}", message_id="unheard-again")

    # And a listener that comes afterwards gets none of it.
    got = Collector()
    await bus.listen("nobody-listens", got.handle)
    await bus.broadcast("nobody-listens", b"{}", message_id="heard")
    assert [d.message_id for d in await got.wait_for(1)] == ["heard"]
    assert await holds_for(lambda: got.ids == ["heard"], 0.3)


@bounded
async def test_a_failing_listener_drops_that_message_and_takes_the_next(
    bus: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str | None] = []

    async def handler(delivery: Delivery) -> None:
        seen.append(delivery.message_id)
        if delivery.message_id == "bad":
            raise RuntimeError("this broadcast cannot be handled")

    with caplog.at_level(logging.ERROR, logger="agentcomm.bus"):
        await bus.listen("presence", handler)
        await _broadcast_all(bus, "presence", ["bad", "good-1", "good-2"])
        await wait_until(lambda: len(seen) == 3, what="three broadcasts")

    # Dropped, not retried.
    assert await holds_for(lambda: seen == ["bad", "good-1", "good-2"], 0.5)
    errors = [
        record.getMessage()
        for record in caplog.records
        if record.levelno == logging.ERROR and record.name.startswith("agentcomm.bus")
    ]
    assert errors == ["Listener of presence failed on broadcast bad; the message is dropped"]


@bounded
async def test_a_slow_listener_does_not_hold_up_the_others(backend: BusBackend) -> None:
    bus = await backend.new_bus()
    release = asyncio.Event()
    slow: list[str | None] = []

    async def slow_handler(delivery: Delivery) -> None:
        await release.wait()
        slow.append(delivery.message_id)

    quick = Collector()
    await bus.listen("presence", slow_handler)
    await bus.listen("presence", quick.handle)

    await _broadcast_all(bus, "presence", _ids(5))

    await quick.wait_for(5)
    assert slow == []
    release.set()
    await wait_until(lambda: slow == _ids(5), what="the slow listener")


@bounded
async def test_topic_names_are_ids(bus: Bus) -> None:
    for bad in ["", "with space", "a/b", "-leading", "x" * 101]:
        with pytest.raises(ValueError, match="not a valid topic name"):
            await bus.broadcast(bad, b"{}")
        with pytest.raises(ValueError, match="not a valid topic name"):
            await bus.listen(bad, Collector().handle)


@bounded
async def test_a_closed_bus_refuses_broadcasts_and_listeners(backend: BusBackend) -> None:
    never_connected = backend.unconnected_bus()
    with pytest.raises(BusClosed):
        await never_connected.broadcast("presence", b"{}")
    bus = await backend.new_bus()
    got = Collector()
    await bus.listen("presence", got.handle)
    await bus.close()

    with pytest.raises(BusClosed):
        await bus.broadcast("presence", b"{}")
    with pytest.raises(BusClosed):
        await bus.listen("presence", got.handle)


# The in-process bus has no connection to lose: this runs on RabbitMQ's backends only.
@pytest.mark.parametrize(
    "bus_kind",
    [
        pytest.param(kind, marks=pytest.mark.rabbitmq)
        for kind in ("rabbitmq", "rabbitmq-plain", "rabbitmq-quorum")
    ],
    indirect=True,
)
@bounded
async def test_a_listener_keeps_listening_after_the_connection_is_cut(
    backend: BusBackend,
) -> None:
    assert backend.vhost is not None
    listening = await backend.new_bus()
    sender = await backend.new_bus()
    reconnected = asyncio.Event()
    listening.on_reconnect(reconnected.set)
    got = Collector()
    await listening.listen("presence", got.handle)
    await sender.broadcast("presence", b"{}", message_id="before")
    await got.wait_for(1)

    # RabbitMQ closes both connections; each bus reconnects on its own.
    await rabbitmqctl("close_all_connections", "-p", backend.vhost, "test")
    await asyncio.wait_for(reconnected.wait(), 30)

    # The listener's queue, binding and consumer are back by the time on_reconnect fires.
    await sender.broadcast("presence", b"{}", message_id="after", timeout=WAIT)
    await got.wait_for(2)
    assert got.ids == ["before", "after"]
    assert await holds_for(lambda: len(got.items) == 2, 0.3)
