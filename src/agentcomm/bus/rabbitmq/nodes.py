"""The nodes a RabbitMQ bus may connect to (RABBITMQ_HOSTS), and the one place that picks which.

A RabbitMQ cluster serves every queue and exchange from any of its nodes, so a client that
loses its node only needs another. aio-pika's robust connection reconnects to the one URL it
was given, though; what it does on every attempt, at start and on each reconnect, is have
aiormq open the TCP (or TLS) link through a transport factory, aiormq's documented seam for
other transports. So the bus hands aiormq a factory that opens the link to a node of its
choosing: `Nodes.reach` tries them in turn, starting with the one after the node it tried
last, so that a reconnect after a node's loss goes to the next node first, and one attempt
tries every node once before it fails. The URL still gives the credentials and the vhost.

The framed wire's connection already opens its links through a factory of its own
(`wire/gathering.py`), which reaches the nodes the same way. The plain wire uses
`NodesRobustConnection` (aio-pika's robust connection with one more connection parameter,
declared the way aio-pika declares its own) only when there is more than one node: with one,
it stays aio-pika's stock connection.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import aio_pika
from aio_pika.abc import AbstractRobustConnection, ConnectionParameter
from aio_pika.connection import make_url
from aiormq.connection import TransportFactory
from aiormq.exceptions import AMQPConnectionError
from yarl import URL

_T = TypeVar("_T")
_Connection = TypeVar("_Connection", bound=AbstractRobustConnection)

# Seconds one node may take to accept the TCP (and TLS) link before the next is tried: a node
# whose host is gone may not refuse, only stay silent.
NODE_CONNECT_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class Node:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class Nodes:
    """The nodes of one bus, tried in turn; `current` is the one its link is on (the first
    until a link is made, and the last one reached while the link is down)."""

    def __init__(self, nodes: Sequence[Node], *, timeout: float = NODE_CONNECT_TIMEOUT) -> None:
        if not nodes:
            raise ValueError("A bus needs at least one RabbitMQ node.")
        self.nodes = tuple(nodes)
        self.current = self.nodes[0]
        self._timeout = timeout
        self._next = 0

    @classmethod
    def of_url(cls, url: str) -> Nodes:
        """The one node an AMQP URL names."""
        parsed = URL(url)
        port = parsed.port or (5671 if parsed.scheme == "amqps" else 5672)
        return cls([Node(parsed.host or "localhost", port)])

    def __str__(self) -> str:
        return ", ".join(str(node) for node in self.nodes)

    async def reach(self, open_link: Callable[[Node], Awaitable[_T]]) -> _T:
        """`open_link(node)` for each node in turn until one succeeds; raises
        AMQPConnectionError (what aiormq raises for a refused link) naming each failure."""
        failures = []
        for _ in self.nodes:
            node = self.nodes[self._next]
            self._next = (self._next + 1) % len(self.nodes)
            try:
                async with asyncio.timeout(self._timeout):
                    link = await open_link(node)
            except TimeoutError:
                failures.append(f"{node}: no answer within {self._timeout:g} s")
            except OSError as exc:
                failures.append(f"{node}: {exc.strerror or repr(exc)}")
            else:
                self.current = node
                return link
        raise AMQPConnectionError(f"No RabbitMQ node took the connection ({'; '.join(failures)})")


class NodesTransportFactory(TransportFactory):
    """aiormq's TCP/TLS links, opened to the first of `nodes` that takes one."""

    def __init__(self, nodes: Nodes) -> None:
        self.nodes = nodes

    async def create(
        self, url: URL, **kwargs: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        context = await tls_context(url, kwargs)
        return await self.nodes.reach(
            lambda node: asyncio.open_connection(
                host=node.host, port=node.port, ssl=context, **kwargs
            )
        )


async def tls_context(url: URL, kwargs: dict[str, Any]) -> ssl.SSLContext | None:
    """The TLS context of an amqps link, taken out of the keywords aiormq hands a transport
    factory (None for amqp)."""
    provider = kwargs.pop("ssl_context_provider", None)
    if url.scheme != "amqps" or provider is None:
        return None
    context: ssl.SSLContext = await provider.get_context()
    return context


def _as_given(value: Any) -> Any:
    return value


class NodesRobustConnection(aio_pika.RobustConnection):
    """aio-pika's robust connection, opening each link through the transport factory
    `transport_for(nodes)` makes."""

    # Parameters marked is_kwarg are handed to aiormq.connect on every (re)connect; aio-pika
    # declares its own this way (interleave, happy_eyeballs_delay).
    PARAMETERS = (
        *aio_pika.RobustConnection.PARAMETERS,
        ConnectionParameter(name="transport_factory", parser=_as_given, is_kwarg=True),
    )

    def __init__(
        self,
        url: URL,
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        nodes: Nodes,
        **kwargs: Any,
    ) -> None:
        self.nodes = nodes
        super().__init__(url, loop, transport_factory=self.transport_for(nodes), **kwargs)

    def transport_for(self, nodes: Nodes) -> TransportFactory:
        return NodesTransportFactory(nodes)


async def connect_to_nodes(
    connection_class: Callable[..., _Connection],
    url: str,
    nodes: Nodes,
    *,
    timeout: float,
    client_properties: dict[str, Any],
    **parameters: Any,
) -> _Connection:
    """What `aio_pika.connect_robust(url, connection_class=…, **parameters)` does, with `nodes`
    handed to the connection class (connect_robust writes every keyword into the URL's query,
    which takes only text and numbers)."""
    connection = connection_class(
        make_url(url, **parameters),
        nodes=nodes,
        client_properties=client_properties,
        **parameters,
    )
    await connection.connect(timeout=timeout)
    return connection
