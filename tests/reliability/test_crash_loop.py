"""A message that kills its consumer every time it is handled runs out of attempts: each time
it comes back unsettled it is charged one, and after `max_deliveries` it is dead-lettered (the
consumer's `on_dead_letter` sees it first) while the other messages of the queue flow.

The consumer reaches RabbitMQ through a TcpProxy; "dying" is its connection reset while the
poison message is being handled (and that handler ended with it). On quorum queues too, which
count deliveries themselves: the bus's count is the one that decides.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from agentcomm.bus.base import Delivery
from agentcomm.bus.rabbitmq import RabbitMQBus
from agentcomm.bus.rabbitmq.queues import QueueType
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(90)]

MAX_DELIVERIES = 3
TIMEOUT = 30.0


def url(port: int, vhost: str) -> str:
    return f"amqp://guest:guest@127.0.0.1:{port}/{vhost}"


@pytest.fixture
async def proxy() -> AsyncIterator[TcpProxy]:
    async with TcpProxy("127.0.0.1", 5672) as proxy:
        yield proxy


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
async def test_a_message_that_kills_its_consumer_is_dead_lettered_after_bounded_attempts(
    rabbitmq_vhost: str, proxy: TcpProxy, rabbitmq_fast_path: bool, queue_type: QueueType
) -> None:
    producer = RabbitMQBus(
        url(5672, rabbitmq_vhost),
        name="producer",
        fast_path=rabbitmq_fast_path,
        queue_type=queue_type,
    )
    consumer = RabbitMQBus(
        url(proxy.port, rabbitmq_vhost),
        name="consumer",
        fast_path=rabbitmq_fast_path,
        queue_type=queue_type,
    )
    await producer.connect()
    await consumer.connect()
    try:
        await producer.declare_queue("work")
        await producer.publish("work", b"poison", message_id="poison")
        for number in range(10):
            await producer.publish("work", b"ok", message_id=f"ok-{number}")

        runs: list[int] = []
        poison_running: asyncio.Queue[asyncio.Task[object]] = asyncio.Queue()
        handled: set[str] = set()
        given_up: list[Delivery] = []

        async def handler(delivery: Delivery) -> None:
            if delivery.message_id == "poison":
                runs.append(delivery.attempt)
                task = asyncio.current_task()
                assert task is not None
                poison_running.put_nowait(task)
                await asyncio.Event().wait()  # until the process "dies"
            handled.add(delivery.message_id or "")

        async def on_dead_letter(delivery: Delivery) -> None:
            given_up.append(delivery)

        await consumer.consume(
            "work",
            handler,
            concurrency=4,
            max_deliveries=MAX_DELIVERIES,
            on_dead_letter=on_dead_letter,
        )
        async with asyncio.timeout(TIMEOUT):
            while not given_up:
                getting = asyncio.ensure_future(poison_running.get())
                done, _ = await asyncio.wait({getting}, timeout=0.2)
                if not done:
                    getting.cancel()
                    continue
                # The consumer dies with the poison message in hand.
                proxy.reset()
                getting.result().cancel()
        await wait_until(lambda: len(handled) == 10, timeout=TIMEOUT, what="the other messages")
        assert [d.message_id for d in given_up] == ["poison"]
        assert len(runs) <= 2 * MAX_DELIVERIES, runs
        # Nothing is left: the poison message was dropped (the queue has no dead-letter queue).
        await wait_until(
            lambda: not poison_running.qsize(), timeout=TIMEOUT, what="no more poison runs"
        )
    finally:
        await consumer.close()
        await producer.close()
