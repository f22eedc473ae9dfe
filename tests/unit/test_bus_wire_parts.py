"""The private parts of aio-pika and aiormq that the bus's AMQP fast path (FramedWire) is built
on are all still there in the installed versions.

The fast path subclasses aio-pika's robust connection, channel and queue (wire/gathering.py,
wire/direct.py) and reads a few of their private attributes; pyproject.toml pins aio-pika and
aiormq to the releases this was tested with. When an upgrade takes one of those parts away,
this test names it and says what to do, instead of the bus failing in some stranger way.
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
    Part(
        "aio-pika",
        "Connection.kwargs",
        lambda made: isinstance(getattr(made.connection, "kwargs", None), dict),
    ),
    Part(
        "aio-pika",
        "Connection.connect passing Connection.kwargs on to aiormq",
        lambda _: "self.kwargs" in _source(aio_pika.Connection, "connect"),
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
    ),
    Part(
        "aiormq",
        "Connection(transport_factory=...)",
        lambda _: "transport_factory" in _parameters(aiormq.Connection.__init__),
    ),
    # frames.py: the largest frame the link agreed on, to cut a message's body to it.
    Part(
        "aiormq",
        "Connection.connection_tune",
        lambda _: _annotated("aiormq.connection", "Connection", "connection_tune"),
    ),
]


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
