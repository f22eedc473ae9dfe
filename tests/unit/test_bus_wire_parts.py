"""The private parts of aio-pika and aiormq that the bus's AMQP fast path (FramedWire) is built
on are all still there in the installed versions, and so are the less documented ones its
failover between RabbitMQ nodes (RABBITMQ_HOSTS, nodes.py) relies on.

The fast path subclasses aio-pika's robust connection, channel and queue (wire/gathering.py,
wire/direct.py) and reads a few of their private attributes; pyproject.toml pins aio-pika and
aiormq to the releases this was tested with. When an upgrade takes one of those parts away,
this test names it and says what to do, instead of the bus failing in some stranger way.

The failover declares one more connection parameter (aiormq's transport factory) the way
aio-pika declares its own, and needs aio-pika to pass it on to aiormq on every reconnect; the
plain wire uses that too when there are several nodes.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import aio_pika
import aiormq
import pytest
from yarl import URL

from agentcomm.bus.rabbitmq.nodes import Node, Nodes, NodesRobustConnection, NodesTransportFactory


@dataclass(frozen=True)
class Made:
    """aio-pika objects made the way the bus makes them, without connecting anywhere."""

    connection: aio_pika.RobustConnection
    channel: aio_pika.RobustChannel
    queue: aio_pika.RobustQueue


@dataclass(frozen=True)
class Part:
    package: str
    name: str
    present: Callable[[Made], bool]
    # What uses it: the fast path, or the failover between nodes (on either wire).
    failover: bool = False


def _source(owner: Any, method: str) -> str:
    function = getattr(owner, method, None)
    return inspect.getsource(function) if function is not None else ""


def _parameters(function: Any) -> list[str]:
    return list(inspect.signature(function).parameters) if function is not None else []


def _annotated(module: str, owner: str, attribute: str) -> bool:
    cls = getattr(importlib.import_module(module), owner, None)
    return attribute in getattr(cls, "__annotations__", {})


PARTS = [
    # gathering.py: the link of every (re)connect gets its fast path before aio-pika restores
    # the channels and consumers on it.
    Part(
        "aio-pika",
        "RobustConnection._on_connected",
        lambda _: inspect.iscoroutinefunction(vars(aio_pika.RobustConnection).get("_on_connected")),
    ),
    Part(
        "aio-pika",
        "Connection.connect calling Connection._on_connected",
        lambda _: "self._on_connected()" in _source(aio_pika.Connection, "connect"),
    ),
    # nodes.py: the transport factory reaches aiormq as a connection parameter, on every
    # (re)connect.
    Part(
        "aio-pika",
        "Connection.PARAMETERS with is_kwarg parameters kept in Connection.kwargs",
        lambda _: _a_parameter_reaches_the_keywords(),
        failover=True,
    ),
    Part(
        "aio-pika",
        "Connection.connect passing Connection.kwargs on to aiormq",
        lambda _: "self.kwargs" in _source(aio_pika.Connection, "connect"),
        failover=True,
    ),
    Part(
        "aio-pika",
        "RobustConnection reconnecting through Connection.connect",
        lambda _: "Connection.connect(self" in inspect.getsource(aio_pika.RobustConnection),
        failover=True,
    ),
    Part("aio-pika", "Connection.transport", lambda made: hasattr(made.connection, "transport")),
    Part(
        "aio-pika",
        "UnderlayConnection.connection",
        lambda _: _annotated("aio_pika.connection", "UnderlayConnection", "connection"),
    ),
    # direct.py: channels and queues of the bus's own classes, consuming through the fast path.
    Part(
        "aio-pika",
        "Connection.channel making Connection.CHANNEL_CLASS",
        lambda _: "CHANNEL_CLASS" in _source(aio_pika.Connection, "channel"),
    ),
    Part(
        "aio-pika",
        "Channel.declare_queue making Channel.QUEUE_CLASS",
        lambda _: "QUEUE_CLASS" in _source(aio_pika.Channel, "declare_queue"),
    ),
    Part(
        "aio-pika",
        "Channel._connection",
        lambda made: getattr(made.channel, "_connection", None) is made.connection,
    ),
    Part(
        "aio-pika",
        "RobustQueue._consumers",
        lambda made: isinstance(getattr(made.queue, "_consumers", None), dict),
    ),
    Part(
        "aio-pika",
        "RobustQueue.restore consuming again what RobustQueue._consumers holds",
        lambda _: "self._consumers" in _source(aio_pika.RobustQueue, "restore"),
    ),
    Part(
        "aio-pika",
        "RobustQueue.consume(callback, no_ack, exclusive, arguments, consumer_tag, timeout, "
        "robust)",
        lambda _: (
            _parameters(getattr(aio_pika.RobustQueue, "consume", None))
            == [
                "self",
                "callback",
                "no_ack",
                "exclusive",
                "arguments",
                "consumer_tag",
                "timeout",
                "robust",
            ]
        ),
    ),
    # gathering.py: aiormq opens each link through the bus's transport factory.
    Part(
        "aiormq",
        "connection.TransportFactory.create",
        lambda _: callable(
            getattr(getattr(aiormq.connection, "TransportFactory", None), "create", None)
        ),
        failover=True,
    ),
    Part(
        "aiormq",
        "Connection(transport_factory=...)",
        lambda _: "transport_factory" in _parameters(aiormq.Connection.__init__),
        failover=True,
    ),
    # frames.py: the largest frame the link agreed on, to cut a message's body to it.
    Part(
        "aiormq",
        "Connection.connection_tune",
        lambda _: _annotated("aiormq.connection", "Connection", "connection_tune"),
    ),
]


def _a_parameter_reaches_the_keywords() -> bool:
    factory = NodesTransportFactory(Nodes([Node("127.0.0.1", 1)]))

    class Probe(NodesRobustConnection):
        def transport_for(self, nodes: Nodes) -> NodesTransportFactory:
            return factory

    connection = Probe(URL("amqp://guest:guest@127.0.0.1:1/"), nodes=factory.nodes)
    keywords = getattr(connection, "kwargs", None)
    return isinstance(keywords, dict) and keywords.get("transport_factory") is factory


@pytest.fixture
async def made() -> Made:
    connection = aio_pika.RobustConnection(URL("amqp://guest:guest@127.0.0.1:1/"))
    channel = aio_pika.RobustChannel(connection)
    return Made(connection, channel, aio_pika.RobustQueue(channel, "work", durable=True))


def _missing(part: Part, made: Made) -> str | None:
    """None when `part` is there; otherwise what to tell whoever upgraded."""
    if part.present(made):
        return None
    release = ".".join(version(part.package).split(".")[:2])
    if part.failover:
        return (
            f"{part.package} {release} no longer has {part.name}, which the bus's failover "
            f"between RabbitMQ nodes uses; give RABBITMQ_HOSTS one node (and run with "
            f"RABBITMQ_FAST_PATH=0) or pin {part.package} below {release}"
        )
    return (
        f"{part.package} {release} no longer has {part.name}, which the bus's AMQP fast path "
        f"uses; run with RABBITMQ_FAST_PATH=0 or pin {part.package} below {release}"
    )


@pytest.mark.parametrize("part", PARTS, ids=[part.name for part in PARTS])
async def test_the_fast_path_finds_what_it_uses(part: Part, made: Made) -> None:
    missing = _missing(part, made)
    if missing is not None:
        pytest.fail(missing, pytrace=False)


async def test_a_missing_part_is_told_in_one_plain_sentence(made: Made) -> None:
    gone = Part("aio-pika", "Channel._gone", lambda _: False)
    release = ".".join(version("aio-pika").split(".")[:2])
    assert _missing(gone, made) == (
        f"aio-pika {release} no longer has Channel._gone, which the bus's AMQP fast path uses; "
        f"run with RABBITMQ_FAST_PATH=0 or pin aio-pika below {release}"
    )
