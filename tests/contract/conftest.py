"""Both buses behind one fixture, so that every contract test runs against each of them.

`backend` is parametrized: the in-process bus, and RabbitMQ in a fresh vhost of its own, on the
bus's own AMQP framing (`rabbitmq`), on plain aio-pika (`rabbitmq-plain`, RABBITMQ_FAST_PATH=0)
and with quorum queues (`rabbitmq-quorum`, RABBITMQ_QUEUE_TYPE=quorum, on the framing). The
helpers here (waiting with a deadline, collecting deliveries) are shared with the RabbitMQ-only
integration tests.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

import aio_pika
import pytest

from agentcomm.bus.base import Bus, Delivery
from agentcomm.bus.memory import InMemoryBus
from agentcomm.bus.rabbitmq import RabbitMQBus

# Upper bound on any single wait in these tests; generous so a busy CI machine does not flake.
WAIT = 15.0
# Upper bound on a whole test, so that no await in it can hang.
TEST_BUDGET = 90.0

_P = ParamSpec("_P")
_T = TypeVar("_T")


def bounded(test: Callable[_P, Awaitable[_T]]) -> Callable[_P, Awaitable[_T]]:
    """Runs an async test under one deadline that covers every await in it."""

    @functools.wraps(test)
    async def run(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        async with asyncio.timeout(TEST_BUDGET):
            return await test(*args, **kwargs)

    return run


def amqp_url(vhost: str) -> str:
    return f"amqp://guest:guest@127.0.0.1:5672/{vhost}"


async def wait_until(
    condition: Callable[[], bool], *, timeout: float = WAIT, what: str = ""
) -> None:
    """Polls `condition` until it holds; fails the test when `timeout` passes first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or condition}")
        await asyncio.sleep(0.01)


async def holds_for(condition: Callable[[], bool], seconds: float) -> bool:
    """Whether `condition` stays true for `seconds` (to check that something does NOT happen)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not condition():
            return False
        await asyncio.sleep(0.01)
    return condition()


@dataclass
class Collector:
    """A handler that records every delivery."""

    items: list[Delivery] = field(default_factory=list)

    async def handle(self, delivery: Delivery) -> None:
        self.items.append(delivery)

    async def wait_for(self, count: int, *, timeout: float = WAIT) -> list[Delivery]:
        await wait_until(
            lambda: len(self.items) >= count, timeout=timeout, what=f"{count} deliveries"
        )
        return self.items

    @property
    def ids(self) -> list[str | None]:
        return [delivery.message_id for delivery in self.items]


class BusBackend:
    """Makes buses of one kind that share queues, and looks at queue depths from outside."""

    def __init__(self, kind: str, vhost: str | None) -> None:
        self.kind = kind
        self.vhost = vhost
        self._buses: list[Bus] = []
        self._shared_memory: InMemoryBus | None = None
        self._inspector: aio_pika.abc.AbstractConnection | None = None

    def unconnected_bus(self) -> Bus:
        if self.kind == "memory":
            return InMemoryBus()
        assert self.vhost is not None
        return RabbitMQBus(
            amqp_url(self.vhost),
            connect_attempts=2,
            name="agentcomm-contract",
            fast_path=self.kind != "rabbitmq-plain",
            queue_type="quorum" if self.kind == "rabbitmq-quorum" else "classic",
        )

    async def new_bus(self) -> Bus:
        """A connected bus; on the in-process backend every call gives the same one."""
        if self.kind == "memory" and self._shared_memory is not None:
            return self._shared_memory
        bus = self.unconnected_bus()
        await asyncio.wait_for(bus.connect(), WAIT)
        self._buses.append(bus)
        if isinstance(bus, InMemoryBus):
            self._shared_memory = bus
        return bus

    async def depth(self, queue: str) -> int:
        """Messages ready in `queue` (neither being handled nor unacked)."""
        if self._shared_memory is not None:
            return self._shared_memory.depth(queue)
        assert self.vhost is not None
        if self._inspector is None:
            self._inspector = await asyncio.wait_for(aio_pika.connect(amqp_url(self.vhost)), WAIT)
        channel = await asyncio.wait_for(self._inspector.channel(), WAIT)
        try:
            declared = await asyncio.wait_for(channel.declare_queue(queue, passive=True), WAIT)
            count = declared.declaration_result.message_count
            return count or 0
        finally:
            await asyncio.wait_for(channel.close(), WAIT)

    async def aclose(self) -> None:
        for bus in self._buses:
            await asyncio.wait_for(bus.close(), WAIT)
        if self._inspector is not None:
            await asyncio.wait_for(self._inspector.close(), WAIT)


@pytest.fixture(
    params=[
        "memory",
        pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
        pytest.param("rabbitmq-plain", marks=pytest.mark.rabbitmq),
        pytest.param("rabbitmq-quorum", marks=pytest.mark.rabbitmq),
    ]
)
def bus_kind(request: pytest.FixtureRequest) -> tuple[str, str | None]:
    if request.param == "memory":
        return "memory", None
    vhost: str = request.getfixturevalue("rabbitmq_vhost")
    return request.param, vhost


@pytest.fixture
async def backend(bus_kind: tuple[str, str | None]) -> AsyncIterator[BusBackend]:
    kind, vhost = bus_kind
    backend = BusBackend(kind, vhost)
    try:
        yield backend
    finally:
        await backend.aclose()


@pytest.fixture
async def bus(backend: BusBackend) -> Bus:
    return await backend.new_bus()
