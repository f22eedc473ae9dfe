"""Nodes: the RabbitMQ nodes a bus connects to, tried in turn at start and on every reconnect."""

from __future__ import annotations

import asyncio

import pytest
from aiormq.exceptions import AMQPConnectionError

from agentcomm.bus.rabbitmq.connection import describe
from agentcomm.bus.rabbitmq.nodes import Node, Nodes

A, B, C = Node("10.0.0.1", 5672), Node("10.0.0.2", 5672), Node("10.0.0.3", 5673)


class Cluster:
    """Opens links to the nodes that are up; records every node tried."""

    def __init__(self, *up: Node, silent: Node | None = None) -> None:
        self.up = set(up)
        self.silent = silent
        self.tried: list[Node] = []

    async def open(self, node: Node) -> str:
        self.tried.append(node)
        if node == self.silent:
            await asyncio.Event().wait()
        if node not in self.up:
            raise ConnectionRefusedError(111, "Connection refused")
        return f"link to {node}"


async def test_the_first_node_is_tried_first_and_a_reconnect_starts_with_the_next() -> None:
    nodes = Nodes([A, B, C])
    cluster = Cluster(A, B, C)
    assert nodes.current == A

    assert await nodes.reach(cluster.open) == f"link to {A}"
    # The link to A is lost (A may be down): the reconnection goes to B first.
    assert await nodes.reach(cluster.open) == f"link to {B}"
    assert nodes.current == B
    assert cluster.tried == [A, B]


async def test_one_attempt_tries_every_node_once_from_where_it_left_off() -> None:
    nodes = Nodes([A, B, C])
    await nodes.reach(Cluster(A).open)
    cluster = Cluster(A)  # B and C are down

    assert await nodes.reach(cluster.open) == f"link to {A}"
    assert cluster.tried == [B, C, A]


async def test_no_node_up_is_aiormqs_connection_error_naming_each() -> None:
    nodes = Nodes([A, B])
    with pytest.raises(AMQPConnectionError) as refused:
        await nodes.reach(Cluster().open)
    assert str(refused.value) == (
        "No RabbitMQ node took the connection (10.0.0.1:5672: Connection refused; "
        "10.0.0.2:5672: Connection refused)"
    )
    assert nodes.current == A


async def test_a_silent_node_is_given_up_on_in_time() -> None:
    nodes = Nodes([A, B], timeout=0.05)
    cluster = Cluster(B, silent=A)
    async with asyncio.timeout(5):
        assert await nodes.reach(cluster.open) == f"link to {B}"
    assert cluster.tried == [A, B]


def test_nodes_are_shown_as_addresses() -> None:
    assert str(Nodes([A, Node("::1", 5674)])) == "10.0.0.1:5672, [::1]:5674"
    assert Nodes.of_url("amqps://u:p@mq.example/vhost").nodes == (Node("mq.example", 5671),)
    url = "amqp://u:secret@ignored:1/team"
    assert describe(url, Nodes([A, B])) == "10.0.0.1:5672, 10.0.0.2:5672 (vhost team)"
    assert describe(url, A) == "10.0.0.1:5672/team"
    assert describe(url) == "ignored:1/team"
    assert describe("amqp://u:secret@mq:5672/") == "mq:5672 (vhost /)"
