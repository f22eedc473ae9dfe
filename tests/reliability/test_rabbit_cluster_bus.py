"""The RabbitMQ bus on a real three-node RabbitMQ cluster (tests/support/rabbit_cluster.py) with
RABBITMQ_HOSTS naming the three nodes and RABBITMQ_QUEUE_TYPE=quorum, while a node is stopped in
the middle of the traffic.

Each scenario publishes 500 messages (each publish confirmed; a publish that fails with
BusUnavailable is sent again with the same id, as the hub does) to a quorum queue that the same
bus consumes, acking each delivery after its handler returned, while another bus broadcasts on
a topic the first one listens to. Half-way, one node is stopped:

- `connected`: the node the bus is connected to (the queue's leader is elsewhere): the bus
  reconnects to another node, its consumer and listener come back there, `on_reconnect` fires;
- `leader`: the node holding the queue's leader (the bus is connected elsewhere): the queue
  elects a new leader among the two left and the bus keeps its connection.

Counted: 0 lost (every confirmed message is delivered), and every delivery beyond the first
of a message explained by what the bus documents — a delivery RabbitMQ hands out again
(flagged redelivered, its counted copy too; see bus/rabbitmq/redelivery.py) or a publish sent
again after BusUnavailable. The listener hears broadcasts sent after the stop. Both wires.

One cluster serves every scenario (forming it takes 15-25 s); each scenario starts the stopped
node again at its end, so the next one has three nodes.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import pytest_asyncio

from agentcomm.bus.base import BusUnavailable, Delivery
from agentcomm.bus.rabbitmq import RabbitMQBus
from tests.conftest import rabbitmq_reachable, require
from tests.reliability.stack import report_line
from tests.support.rabbit_cluster import RabbitCluster, rabbit_cluster, rabbitmq_installed
from tests.support.waiting import wait_until

pytestmark = [
    pytest.mark.rabbitmq,
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.asyncio(loop_scope="module"),
]

MESSAGES = 500
# Published before the node is stopped; the rest while it stops and after.
BEFORE_STOP = 200
# At least this many are left for after the stop, whatever the pace of the machine.
AFTER_STOP = 100
# Between the publishes sent while the node is stopping: the traffic spans the stop.
PACE = 0.01
# Between two broadcasts of the ticking bus.
TICK = 0.05
# What handling one message takes: with HANDLERS at once the consumer falls behind the
# publisher, so the node stops with deliveries unacked (handed out, not yet handled).
HANDLING = 0.02
HANDLERS = 4
PUBLISH_TIMEOUT = 5.0
WAIT = 120.0


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def cluster() -> AsyncIterator[RabbitCluster]:
    require(rabbitmq_installed(), "rabbitmq-server")
    # The extra nodes register with the main node's epmd (see test_infra_rabbit_cluster.py).
    require(rabbitmq_reachable(), "the main RabbitMQ node")
    async with rabbit_cluster(size=3) as cluster:
        report_line("rabbit_cluster_start", cluster.timings)
        yield cluster


def cluster_bus(cluster: RabbitCluster, first: int, *, fast_path: bool, name: str) -> RabbitMQBus:
    """A bus with all three nodes in RABBITMQ_HOSTS, starting with node `first`."""
    order = [first, *(index for index in range(3) if index != first)]
    return RabbitMQBus(
        cluster.amqp_urls[first],
        connect_attempts=3,
        name=name,
        fast_path=fast_path,
        queue_type="quorum",
        hosts=[("127.0.0.1", cluster.nodes[index].amqp_port) for index in order],
    )


async def leader_of(cluster: RabbitCluster, queue: str, asking: int) -> int:
    """The index of the node holding `queue`'s leader, as node `asking` sees it."""
    out = await cluster.ctl(asking, "list_queues", "name", "leader", "--formatter", "json")
    [leader] = [row["leader"] for row in json.loads(out) if row["name"] == queue]
    return cluster.names.index(leader)


@dataclass
class Traffic:
    """What one scenario sent and what reached the consumer and the listener."""

    deliveries: list[Delivery] = field(default_factory=list)
    confirmed: list[str] = field(default_factory=list)
    sent_again: set[str] = field(default_factory=set)
    ticks_sent: int = 0
    ticks_heard: list[int] = field(default_factory=list)

    async def handle(self, delivery: Delivery) -> None:
        await asyncio.sleep(HANDLING)
        self.deliveries.append(delivery)

    async def hear(self, delivery: Delivery) -> None:
        self.ticks_heard.append(int((delivery.message_id or "tick--1").removeprefix("tick-")))

    def delivered(self) -> set[str]:
        return {delivery.message_id or "" for delivery in self.deliveries}

    async def publish(self, bus: RabbitMQBus, queue: str, message_id: str) -> None:
        """Publishes until confirmed; a BusUnavailable may have stored it, so it is sent again
        with the same id (a duplicate the consumer would recognise by it)."""
        async with asyncio.timeout(WAIT):
            while True:
                try:
                    await bus.publish(
                        queue, message_id.encode(), message_id=message_id, timeout=PUBLISH_TIMEOUT
                    )
                except BusUnavailable:
                    self.sent_again.add(message_id)
                    # The publish waited for the link already; this only keeps a refusal
                    # (Basic.Nack while the queue has no leader) from spinning.
                    await asyncio.sleep(0.1)
                else:
                    self.confirmed.append(message_id)
                    return

    async def tick(self, bus: RabbitMQBus, topic: str) -> None:
        while True:
            try:
                await bus.broadcast(topic, b"{}", message_id=f"tick-{self.ticks_sent}")
            except BusUnavailable:
                continue
            self.ticks_sent += 1
            await asyncio.sleep(TICK)


@pytest.mark.parametrize("victim", ["connected", "leader"])
@pytest.mark.parametrize("fast_path", [pytest.param(True, id="fast-path"), False])
async def test_a_node_stopped_mid_traffic_loses_nothing(
    cluster: RabbitCluster, victim: str, fast_path: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agentcomm.bus.rabbitmq")
    # A scenario that failed before it started its node again leaves it to the next one.
    for index in range(3):
        if not cluster.is_running(index):
            await cluster.start_node(index)
    assert await cluster.running_nodes(0) == sorted(cluster.names)
    scenario = f"{victim}-{'fast' if fast_path else 'plain'}"
    queue, topic = f"cluster-work-{scenario}", f"cluster-ticks-{scenario}"
    # The bus under test is on node 0. connected: the queue's leader on node 2, node 0
    # stopped, the ticking bus on node 1. leader: the leader on node 1, node 1 stopped, the
    # ticking bus on node 2.
    bus_node = 0
    leader_node, ticking_node = (2, 1) if victim == "connected" else (1, 2)
    stopped = bus_node if victim == "connected" else leader_node

    # Declared through a bus on the leader's node: quorum queues put their leader on the
    # node the declaring client is on.
    declaring = cluster_bus(cluster, leader_node, fast_path=fast_path, name="declaring")
    await declaring.connect()
    await declaring.declare_queue(queue)
    await declaring.close()
    assert await leader_of(cluster, queue, asking=bus_node) == leader_node

    traffic = Traffic()
    bus = cluster_bus(cluster, bus_node, fast_path=fast_path, name=f"under-test-{scenario}")
    ticking = cluster_bus(cluster, ticking_node, fast_path=fast_path, name="ticking")
    reconnected = asyncio.Event()
    bus.on_reconnect(reconnected.set)
    await bus.connect()
    await ticking.connect()
    ticker: asyncio.Task[None] | None = None
    try:
        await bus.declare_queue(queue)
        await bus.consume(queue, traffic.handle, concurrency=HANDLERS)
        await bus.listen(topic, traffic.hear)
        ticker = asyncio.create_task(traffic.tick(ticking, topic))
        await wait_until(lambda: bool(traffic.ticks_heard), timeout=WAIT, what="a first tick")

        ids = [f"m{number:03d}" for number in range(MESSAGES)]
        for message_id in ids[:BEFORE_STOP]:
            await traffic.publish(bus, queue, message_id)
        behind_at_stop = len(traffic.confirmed) - len(traffic.deliveries)
        stopping = asyncio.create_task(cluster.stop_node(stopped))
        sent = BEFORE_STOP
        while not stopping.done() and sent < MESSAGES - AFTER_STOP:
            await traffic.publish(bus, queue, ids[sent])
            sent += 1
            await asyncio.sleep(PACE)
        async with asyncio.timeout(WAIT):
            await stopping
        stopped_at_tick = traffic.ticks_sent
        if victim == "connected":
            async with asyncio.timeout(WAIT):
                await reconnected.wait()
        for message_id in ids[sent:]:
            await traffic.publish(bus, queue, message_id)

        await wait_until(
            lambda: traffic.delivered() >= set(ids), timeout=WAIT, what="every message"
        )
        await wait_until(
            lambda: any(tick > stopped_at_tick for tick in traffic.ticks_heard),
            timeout=WAIT,
            what="a broadcast sent after the stop",
        )
        # Counted copies of redelivered messages may still be on their way; let them land.
        settled = len(traffic.deliveries)
        while True:
            await asyncio.sleep(1.0)
            if len(traffic.deliveries) == settled:
                break
            settled = len(traffic.deliveries)
    finally:
        if ticker is not None:
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
        await bus.close()
        await ticking.close()

    per_id = Counter(delivery.message_id for delivery in traffic.deliveries)
    duplicates = sum(count - 1 for count in per_id.values())
    redelivered = sum(1 for delivery in traffic.deliveries if delivery.redelivered)
    lost = sorted(set(traffic.confirmed) - set(per_id))
    # Only the bus under test can have reconnected: the ticking bus's node stays up.
    nodes_logged = [
        record.getMessage()
        for record in caplog.records
        if record.name == "agentcomm.bus.rabbitmq"
        and record.getMessage().startswith("Reconnected to RabbitMQ at")
    ]
    counts = {
        "published": MESSAGES,
        "confirmed": len(set(traffic.confirmed)),
        "sent_again": len(traffic.sent_again),
        "delivered": len(traffic.deliveries),
        "duplicates": duplicates,
        "redelivered": redelivered,
        "lost": len(lost),
        "behind_at_stop": behind_at_stop,
        "reconnected": reconnected.is_set(),
        "ticks_heard_after_stop": sum(1 for t in traffic.ticks_heard if t > stopped_at_tick),
    }
    report_line(f"rabbit_cluster_bus_{scenario}", counts)

    assert lost == []
    assert set(per_id) == set(ids), "a message was delivered that was never published"
    # Every extra delivery is a redelivery (flagged: RabbitMQ's, or the bus's counted copy of
    # one) or comes from a publish sent again.
    again = Counter(d.message_id for d in traffic.deliveries if d.redelivered)
    unexplained = {
        message_id: count
        for message_id, count in per_id.items()
        if count > 1 and again[message_id] < count - 1 and message_id not in traffic.sent_again
    }
    assert unexplained == {}, counts
    assert all(delivery.attempt <= 2 for delivery in traffic.deliveries), counts
    if victim == "connected":
        stopped_port = cluster.nodes[stopped].amqp_port
        assert nodes_logged, "the bus did not log the node it reconnected to"
        assert all(f":{stopped_port}/" not in line for line in nodes_logged), nodes_logged
    else:
        assert not reconnected.is_set(), "the bus lost its connection to a node that stayed up"
        assert await leader_of(cluster, queue, asking=bus_node) != stopped

    await cluster.start_node(stopped)
    assert await cluster.running_nodes(bus_node) == sorted(cluster.names)
