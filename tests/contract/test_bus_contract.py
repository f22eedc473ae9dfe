"""The Bus contract (bus/base.py), checked the same way on the in-process bus and on RabbitMQ."""

from __future__ import annotations

import asyncio
import logging

import pytest

from agentcomm.bus.base import (
    Bus,
    BusClosed,
    BusError,
    BusUnavailable,
    Delivery,
    MessageHandler,
    NotTaken,
    QueueOptions,
    Requeue,
    Unroutable,
)
from tests.contract.conftest import WAIT, BusBackend, Collector, bounded, holds_for, wait_until


@bounded
async def test_round_trip_keeps_body_and_message_id(bus: Bus) -> None:
    await bus.declare_queue("work")
    await bus.publish("work", b'{"n": 1}', message_id="msg-1")
    got = Collector()
    await bus.consume("work", got.handle)

    [delivery] = await got.wait_for(1)

    assert delivery == Delivery(
        queue="work", body=b'{"n": 1}', message_id="msg-1", redelivered=False, attempt=1
    )


@bounded
async def test_a_transient_message_arrives_in_order_with_persistent_ones(bus: Bus) -> None:
    await bus.declare_queue("work")
    await bus.publish("work", b'{"n": 1}', message_id="chunk-0", persistent=False)
    await bus.publish("work", b'{"n": 2}', message_id="chunk-1", persistent=False)
    await bus.publish("work", b'{"n": 3}', message_id="final")
    got = Collector()
    await bus.consume("work", got.handle)

    deliveries = await got.wait_for(3)

    assert [d.message_id for d in deliveries] == ["chunk-0", "chunk-1", "final"]
    assert [d.body for d in deliveries] == [b'{"n": 1}', b'{"n": 2}', b'{"n": 3}']


@bounded
async def test_headers_travel_with_the_message_and_its_redelivery(bus: Bus) -> None:
    """The trace context rides in the headers: the consumer gets them, also on the attempt
    after a failure (RabbitMQ carries them in the AMQP content header both ways)."""
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    await bus.declare_queue("work")
    await bus.publish("work", b"{}", message_id="with", headers={"traceparent": traceparent})
    await bus.publish("work", b"{}", message_id="without")
    seen: list[Delivery] = []

    async def fail_once(delivery: Delivery) -> None:
        seen.append(delivery)
        if delivery.message_id == "with" and delivery.attempt == 1:
            raise Requeue("once more")

    await bus.consume("work", fail_once)
    await wait_until(lambda: len(seen) == 3, what="both messages and the retried one")

    withs = [d for d in seen if d.message_id == "with"]
    assert [d.attempt for d in withs] == [1, 2]
    for delivery in withs:
        assert delivery.headers is not None
        assert delivery.headers["traceparent"] == traceparent
    [without] = [d for d in seen if d.message_id == "without"]
    assert not (without.headers or {}).get("traceparent")


@bounded
async def test_publish_without_message_id_gets_one(bus: Bus) -> None:
    await bus.declare_queue("work")
    await bus.publish("work", b"{}")
    await bus.publish("work", b"{}")
    got = Collector()
    await bus.consume("work", got.handle)

    first, second = await got.wait_for(2)

    assert first.message_id
    assert second.message_id
    assert first.message_id != second.message_id


@bounded
async def test_concurrency_one_handles_in_queue_order_one_at_a_time(bus: Bus) -> None:
    await bus.declare_queue("work")
    ids = [f"m{i:03d}" for i in range(50)]
    for message_id in ids:
        await bus.publish("work", b"{}", message_id=message_id)
    seen: list[str | None] = []
    active = 0
    most_active = 0

    async def handler(delivery: Delivery) -> None:
        nonlocal active, most_active
        active += 1
        most_active = max(most_active, active)
        await asyncio.sleep(0)  # give a second handler the chance to overlap, if it could
        seen.append(delivery.message_id)
        active -= 1

    await bus.consume("work", handler, prefetch=20, concurrency=1)
    await wait_until(lambda: len(seen) == len(ids))

    assert seen == ids
    assert most_active == 1


@bounded
async def test_concurrency_n_runs_up_to_n_handlers_at_once(bus: Bus) -> None:
    await bus.declare_queue("work")
    for i in range(6):
        await bus.publish("work", b"{}", message_id=f"m{i}")
    release = asyncio.Event()
    active = 0
    most_active = 0
    done: list[str | None] = []

    async def handler(delivery: Delivery) -> None:
        nonlocal active, most_active
        active += 1
        most_active = max(most_active, active)
        await release.wait()
        active -= 1
        done.append(delivery.message_id)

    await bus.consume("work", handler, prefetch=10, concurrency=3)
    await wait_until(lambda: active == 3, what="three handlers running")
    assert await holds_for(lambda: active == 3, 0.3)
    release.set()
    await wait_until(lambda: len(done) == 6)

    assert most_active == 3
    assert sorted(done, key=str) == [f"m{i}" for i in range(6)]


@bounded
async def test_message_is_held_while_handled_and_comes_back_after_a_crash(
    backend: BusBackend,
) -> None:
    bus = await backend.new_bus()
    other_bus = await backend.new_bus()
    await bus.declare_queue("work")
    await bus.publish("work", b'{"slow": true}', message_id="slow")
    started = asyncio.Event()
    handler_tasks: list[asyncio.Task[object]] = []
    deliveries: list[Delivery] = []

    async def handler(delivery: Delivery) -> None:
        deliveries.append(delivery)
        if len(deliveries) == 1:
            task = asyncio.current_task()
            assert task is not None
            handler_tasks.append(task)
            started.set()
            await asyncio.Event().wait()  # works forever, until it "crashes"

    await bus.consume("work", handler)
    await asyncio.wait_for(started.wait(), WAIT)
    # Being handled, so not acked, yet not available to anyone else either.
    await other_bus.consume("work", handler)
    assert await holds_for(lambda: len(deliveries) == 1, 0.3)

    handler_tasks[0].cancel()  # the handler dies before it returned

    await wait_until(lambda: len(deliveries) >= 2, what="the redelivery")
    again = deliveries[1]
    assert again.message_id == "slow"
    assert again.body == b'{"slow": true}'
    assert again.redelivered
    # Acked this time. (RabbitMQ may hand it out once more: a message that came back unsettled
    # is charged an attempt with a counted copy before it is handled again, and the copy of one
    # that was then handled is a duplicate, recognised by its message_id.)
    await wait_until(lambda: len(deliveries) <= 3, what="no more deliveries")
    assert await holds_for(lambda: len(deliveries) in (2, 3), 0.5)
    assert all(d.message_id == "slow" and d.redelivered for d in deliveries[1:])
    assert await backend.depth("work") == 0


@bounded
async def test_failing_handler_is_retried_then_dead_lettered_while_the_queue_flows(
    bus: Bus,
) -> None:
    await bus.declare_queue("work.dead")
    await bus.declare_queue("work", QueueOptions(dead_letter_queue="work.dead"))
    for message_id in ["poison", "ok-1", "ok-2", "ok-3"]:
        await bus.publish("work", message_id.encode(), message_id=message_id)
    poison_attempts: list[tuple[int, bool]] = []
    handled: list[str | None] = []

    async def handler(delivery: Delivery) -> None:
        if delivery.message_id == "poison":
            poison_attempts.append((delivery.attempt, delivery.redelivered))
            raise RuntimeError("this message cannot be handled")
        handled.append(delivery.message_id)

    given_up: list[Delivery] = []

    async def on_dead_letter(delivery: Delivery) -> None:
        # Called before the message leaves, so that its sender can be told.
        assert len(dead.items) == 0
        given_up.append(delivery)

    dead = Collector()
    await bus.consume("work", handler, max_deliveries=3, on_dead_letter=on_dead_letter)
    await bus.consume("work.dead", dead.handle)

    [dead_letter] = await dead.wait_for(1)
    await wait_until(lambda: len(handled) == 3)

    assert handled == ["ok-1", "ok-2", "ok-3"]
    assert poison_attempts == [(1, False), (2, True), (3, True)]
    assert dead_letter.message_id == "poison"
    assert dead_letter.body == b"poison"
    assert [(d.message_id, d.body, d.attempt) for d in given_up] == [("poison", b"poison", 3)]
    assert await holds_for(lambda: len(poison_attempts) == 3 and len(dead.items) == 1, 0.3)


@bounded
async def test_failing_handler_without_dead_letter_queue_is_dropped_with_one_warning(
    backend: BusBackend, caplog: pytest.LogCaptureFixture
) -> None:
    bus = await backend.new_bus()
    await bus.declare_queue("work")
    await bus.publish("work", b"poison", message_id="poison")
    attempts: list[int] = []
    handled: list[str | None] = []

    async def handler(delivery: Delivery) -> None:
        if delivery.message_id == "poison":
            attempts.append(delivery.attempt)
            raise RuntimeError("this message cannot be handled")
        handled.append(delivery.message_id)

    async def on_dead_letter(delivery: Delivery) -> None:
        raise RuntimeError("the hook fails; the message leaves anyway")

    with caplog.at_level(logging.WARNING, logger="agentcomm.bus"):
        await bus.consume("work", handler, max_deliveries=2, on_dead_letter=on_dead_letter)
        await wait_until(lambda: len(attempts) == 2)
        await bus.publish("work", b"fine", message_id="after")
        await wait_until(lambda: handled == ["after"])

    assert attempts == [1, 2]
    assert await backend.depth("work") == 0
    warnings = [
        record
        for record in caplog.records
        if record.levelno == logging.WARNING
        and record.name.startswith("agentcomm.bus")
        and "poison" in record.getMessage()
    ]
    assert len(warnings) == 1, [record.getMessage() for record in warnings]


@bounded
async def test_mandatory_publish_to_a_missing_queue_is_unroutable(bus: Bus) -> None:
    with pytest.raises(Unroutable, match="nowhere"):
        await bus.publish("nowhere", b"{}", message_id="lost")


@bounded
async def test_non_mandatory_publish_to_a_missing_queue_is_dropped_quietly(bus: Bus) -> None:
    await bus.publish("nowhere", b"{}", message_id="dropped", mandatory=False)


@bounded
async def test_expired_messages_move_to_the_dead_letter_queue(bus: Bus) -> None:
    await bus.declare_queue("expired")
    await bus.declare_queue("short", QueueOptions(message_ttl_ms=100, dead_letter_queue="expired"))
    await bus.publish("short", b'{"late": true}', message_id="late")
    dead = Collector()
    await bus.consume("expired", dead.handle)

    [delivery] = await dead.wait_for(1)

    assert delivery.message_id == "late"
    assert delivery.body == b'{"late": true}'


@bounded
async def test_a_closed_bus_refuses_everything(bus: Bus) -> None:
    await bus.declare_queue("work")
    await bus.close()
    await bus.close()  # idempotent

    assert not bus.is_connected
    with pytest.raises(BusClosed):
        await bus.publish("work", b"{}", message_id="late")
    with pytest.raises(BusClosed):
        await bus.declare_queue("other")
    with pytest.raises(BusClosed):
        await bus.consume("work", Collector().handle)
    with pytest.raises(BusClosed):
        await bus.delete_queue("work")
    with pytest.raises(BusClosed):
        await bus.connect()


@bounded
async def test_a_bus_that_was_never_connected_refuses_to_publish(backend: BusBackend) -> None:
    bus = backend.unconnected_bus()

    assert not bus.is_connected
    with pytest.raises(BusClosed, match="not connected"):
        await bus.publish("work", b"{}", message_id="early")
    await bus.close()


@bounded
async def test_connect_is_idempotent(bus: Bus) -> None:
    await bus.connect()
    await bus.connect()

    assert bus.is_connected
    await bus.declare_queue("work")
    await bus.publish("work", b"{}", message_id="still-works")
    got = Collector()
    await bus.consume("work", got.handle)
    assert (await got.wait_for(1))[0].message_id == "still-works"


@bounded
async def test_close_lets_the_handler_in_flight_finish_publish_and_be_acked(
    backend: BusBackend,
) -> None:
    bus = await backend.new_bus()
    await bus.declare_queue("work")
    await bus.declare_queue("results")
    await bus.publish("work", b"{}", message_id="job")
    started = asyncio.Event()
    release = asyncio.Event()
    finished = asyncio.Event()

    async def handler(delivery: Delivery) -> None:
        started.set()
        await release.wait()
        # A handler's result must still get out while the bus is closing.
        await bus.publish("results", b"{}", message_id=f"result-of-{delivery.message_id}")
        finished.set()

    await bus.consume("work", handler)
    await asyncio.wait_for(started.wait(), WAIT)
    closing = asyncio.create_task(bus.close())

    assert await holds_for(lambda: not closing.done(), 0.3)
    release.set()
    await asyncio.wait_for(closing, WAIT)

    assert finished.is_set()
    assert await backend.depth("work") == 0  # acked, not given back
    assert await backend.depth("results") == 1


@bounded
async def test_cancelled_subscription_finishes_in_flight_and_takes_no_more(
    backend: BusBackend,
) -> None:
    bus = await backend.new_bus()
    await bus.declare_queue("work")
    await bus.publish("work", b"{}", message_id="first")
    started = asyncio.Event()
    release = asyncio.Event()
    handled: list[str | None] = []

    async def handler(delivery: Delivery) -> None:
        started.set()
        await release.wait()
        handled.append(delivery.message_id)

    subscription = await bus.consume("work", handler)
    await asyncio.wait_for(started.wait(), WAIT)
    cancelling = asyncio.create_task(subscription.cancel())
    assert await holds_for(lambda: not cancelling.done(), 0.3)
    release.set()
    await asyncio.wait_for(cancelling, WAIT)

    assert handled == ["first"]
    await bus.publish("work", b"{}", message_id="second")
    assert await holds_for(lambda: handled == ["first"], 0.3)
    assert await backend.depth("work") == 1


@bounded
async def test_competing_consumers_each_get_distinct_messages(backend: BusBackend) -> None:
    first_bus = await backend.new_bus()
    second_bus = await backend.new_bus()
    await first_bus.declare_queue("work")
    by_consumer: dict[str, list[str | None]] = {"a": [], "b": []}

    def handler_for(name: str) -> MessageHandler:
        async def handle(delivery: Delivery) -> None:
            by_consumer[name].append(delivery.message_id)
            await asyncio.sleep(0.002)  # a little work, so that the other consumer gets a turn

        return handle

    await first_bus.consume("work", handler_for("a"), prefetch=1)
    await second_bus.consume("work", handler_for("b"), prefetch=1)
    ids = [f"m{i}" for i in range(40)]
    for message_id in ids:
        await first_bus.publish("work", b"{}", message_id=message_id)

    await wait_until(lambda: len(by_consumer["a"]) + len(by_consumer["b"]) >= len(ids))

    everything = by_consumer["a"] + by_consumer["b"]
    assert sorted(everything, key=str) == sorted(ids)  # each exactly once
    assert by_consumer["a"]
    assert by_consumer["b"]


@bounded
async def test_redeclaring_with_other_options_is_a_clear_error_and_the_bus_keeps_working(
    bus: Bus,
) -> None:
    await bus.declare_queue("work", QueueOptions(message_ttl_ms=60_000))
    await bus.declare_queue("work", QueueOptions(message_ttl_ms=60_000))  # same: fine

    with pytest.raises(BusError, match="work") as refused:
        await bus.declare_queue("work", QueueOptions(message_ttl_ms=1_000))
    assert not isinstance(refused.value, BusUnavailable)
    with pytest.raises(BusError, match="work"):
        await bus.declare_queue("work")

    await bus.declare_queue("other")
    await bus.publish("work", b"{}", message_id="after-refusal")
    got = Collector()
    await bus.consume("work", got.handle)
    assert (await got.wait_for(1))[0].message_id == "after-refusal"


@bounded
async def test_deleting_a_queue_drops_it_and_a_missing_queue_is_fine(
    backend: BusBackend,
) -> None:
    bus = await backend.new_bus()
    await bus.declare_queue("work")
    await bus.publish("work", b"{}", message_id="gone")

    await bus.delete_queue("work")
    await bus.delete_queue("work")
    await bus.delete_queue("never-existed")

    with pytest.raises(Unroutable):
        await bus.publish("work", b"{}", message_id="nowhere")
    await bus.declare_queue("work")
    assert await backend.depth("work") == 0


@bounded
async def test_consuming_a_missing_queue_is_unroutable(bus: Bus) -> None:
    with pytest.raises(Unroutable, match="missing"):
        await bus.consume("missing", Collector().handle)
    # The refusal leaves the bus usable.
    await bus.declare_queue("work")
    await bus.publish("work", b"{}", message_id="ok")


@bounded
async def test_a_delivery_given_back_untouched_is_not_counted(bus: Bus) -> None:
    await bus.declare_queue("work")
    await bus.publish("work", b"job", message_id="job")
    seen: list[tuple[int, bool]] = []

    async def handler(delivery: Delivery) -> None:
        seen.append((delivery.attempt, delivery.redelivered))
        if len(seen) <= 3:
            # Its consumer is going away before it started on it: back as it was.
            raise NotTaken("not started")

    given_up: list[Delivery] = []

    async def on_dead_letter(delivery: Delivery) -> None:
        given_up.append(delivery)

    await bus.consume("work", handler, max_deliveries=2, on_dead_letter=on_dead_letter)
    await wait_until(lambda: len(seen) == 4, what="the fourth delivery")
    assert seen == [(1, False)] * 4
    assert await holds_for(lambda: len(seen) == 4 and not given_up, 0.3)


@bounded
async def test_a_delivery_whose_handler_met_a_bus_failure_is_not_counted(bus: Bus) -> None:
    # A handler whose own publish failed (a RabbitMQ node stopped, a quorum queue electing a
    # leader) gives the message back; however often that happens, it is not the message's
    # fault and must not use up its attempts.
    await bus.declare_queue("work")
    await bus.publish("work", b"job", message_id="job")
    seen: list[int] = []

    async def handler(delivery: Delivery) -> None:
        seen.append(delivery.attempt)
        if len(seen) <= 4:
            raise BusUnavailable("the bus failed under the handler")

    given_up: list[Delivery] = []

    async def on_dead_letter(delivery: Delivery) -> None:
        given_up.append(delivery)

    await bus.consume("work", handler, max_deliveries=2, on_dead_letter=on_dead_letter)
    await wait_until(lambda: len(seen) == 5, what="the fifth delivery")
    assert not given_up
    assert await holds_for(lambda: len(seen) == 5 and not given_up, 0.3)
