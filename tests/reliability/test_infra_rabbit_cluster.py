"""The RabbitMQ cluster the cluster tests run on works before any hub relies on it: three extra
nodes form a cluster beside the main node, carry a quorum queue across their nodes, keep it
working with one node stopped, take the node back, and leave no process and no file behind.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import aio_pika
import pytest

from tests.conftest import rabbitmq_reachable, require
from tests.reliability.stack import report_line
from tests.support.rabbit_cluster import RabbitCluster, rabbit_cluster, rabbitmq_installed

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow, pytest.mark.timeout(300)]

WAIT = 10.0


async def publish_confirmed(url: str, queue: str, body: bytes) -> None:
    async with asyncio.timeout(WAIT):
        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            # With confirms on, publish returns once the queue's majority has the message.
            await channel.default_exchange.publish(
                aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=queue,
            )


async def get_one(url: str, queue: str) -> bytes:
    async with asyncio.timeout(WAIT):
        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel()
            declared = await channel.get_queue(queue, ensure=True)
            # A consumer, not basic.get: a delivery pushed by the queue's leader, wherever it is.
            async with declared.iterator() as messages:
                async for message in messages:
                    async with message.process():
                        return message.body
    raise AssertionError(f"{queue} closed without a message")


async def replicas(cluster: RabbitCluster, queue: str) -> dict[str, list[str]]:
    """The quorum queue's members and which of them are online, as node 0 sees them."""
    out = await cluster.ctl(0, "list_queues", "name", "members", "online", "--formatter", "json")
    for row in json.loads(out):
        if row["name"] == queue:
            return {"members": sorted(row["members"]), "online": sorted(row["online"])}
    raise AssertionError(f"{queue} is not among the queues: {out}")


async def wait_online(cluster: RabbitCluster, queue: str, expected: list[str]) -> None:
    """A restarted member rejoins its queue a moment after its node runs."""
    try:
        async with asyncio.timeout(30):
            # Polling is the point: membership is state RabbitMQ announces to no client.
            while (await replicas(cluster, queue))["online"] != sorted(expected):  # noqa: ASYNC110
                await asyncio.sleep(0.5)
    except TimeoutError:
        status = await replicas(cluster, queue)
        raise AssertionError(f"online members {status}, expected {expected}") from None


async def test_three_node_cluster_carries_a_quorum_queue_through_a_node_stop() -> None:
    require(rabbitmq_installed(), "rabbitmq-server")
    # The extra nodes register with the main node's epmd; without one, the first extra node
    # would start an epmd that outlives the test.
    require(rabbitmq_reachable(), "the main RabbitMQ node")
    queue = f"infra-quorum-{uuid.uuid4().hex[:8]}"

    async with asyncio.timeout(240), rabbit_cluster(size=3) as cluster:
        report_line("rabbit_cluster_start", cluster.timings)
        assert await cluster.running_nodes(0) == sorted(cluster.names)
        assert await cluster.running_nodes(2) == sorted(cluster.names)

        async with asyncio.timeout(WAIT):
            connection = await aio_pika.connect(cluster.amqp_urls[0])
            async with connection:
                channel = await connection.channel()
                await channel.declare_queue(
                    queue, durable=True, arguments={"x-queue-type": "quorum"}
                )
        # One replica on every node: the queue is not one node's.
        assert await replicas(cluster, queue) == {
            "members": sorted(cluster.names),
            "online": sorted(cluster.names),
        }

        await publish_confirmed(cluster.amqp_urls[0], queue, b"through node 0")
        assert await get_one(cluster.amqp_urls[2], queue) == b"through node 0"

        await cluster.stop_node(1)
        assert not cluster.is_running(1)
        survivors = [cluster.names[0], cluster.names[2]]
        assert await cluster.running_nodes(0) == sorted(survivors)
        assert (await replicas(cluster, queue))["online"] == sorted(survivors)
        # Two of three members are a majority: the queue still takes and gives.
        await publish_confirmed(cluster.amqp_urls[0], queue, b"node 1 down")
        assert await get_one(cluster.amqp_urls[0], queue) == b"node 1 down"

        await cluster.start_node(1)
        assert await cluster.running_nodes(0) == sorted(cluster.names)
        await wait_online(cluster, queue, cluster.names)
        await publish_confirmed(cluster.amqp_urls[1], queue, b"node 1 back")
        assert await get_one(cluster.amqp_urls[2], queue) == b"node 1 back"

        directory = cluster.directory

    assert cluster.leftovers() == []
    assert not directory.exists()
    # The main node was never part of any of it.
    assert rabbitmq_reachable()
