"""The floor: the hub's RabbitMQ hops done by a bare aio-pika relay chain.

One chat round trip through the hub crosses RabbitMQ five times (TEXT → broker_input_queue →
server_input_queue → agent_queue_echo, REPLY → broker_input_queue → server_input_queue). The
floor makes the same five hops with nothing else: the origin publishes to queue 1; relays
consume queue k and publish the unchanged body to queue k+1; the origin consumes queue 5.
Every hop is what the hub does on the bus: a persistent message to a durable queue, published
with a publisher confirm, the delivery acked only after the next publish was confirmed,
consumers with the same prefetch. Relays run in three processes placed like the hub's
(broker: hops 1→2 and 4→5, server: 2→3, agent: 3→4), the origin in the harness like the
frontends.

Run as a relay process: `FLOOR_AMQP_URL=amqp://... python -m agentcomm.bench.floor PREFETCH
IN>OUT [IN>OUT ...]` (the URL in the environment keeps the password out of `ps`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import sys
import uuid
from collections.abc import Sequence

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractRobustConnection,
    DeliveryMode,
)

from agentcomm.bench.loadgen import ROUNDTRIP_TIMEOUT

HOPS = 5
URL_VARIABLE = "FLOOR_AMQP_URL"
SERIAL_VARIABLE = "FLOOR_SERIAL"
CONTENT_TYPE = "application/json"
# Where each relay runs: the hub process that makes the same hop.
RELAY_PLACEMENT: dict[str, tuple[tuple[int, int], ...]] = {
    "floor-broker": ((1, 2), (4, 5)),
    "floor-server": ((2, 3),),
    "floor-agent": ((3, 4),),
}


def floor_queues(run_id: str) -> list[str]:
    return [f"bench_floor_{run_id}_{index}" for index in range(1, HOPS + 1)]


def new_run_id() -> str:
    return uuid.uuid4().hex[:8]


def _message(body: bytes, message_id: str | None) -> aio_pika.Message:
    return aio_pika.Message(
        body,
        content_type=CONTENT_TYPE,
        delivery_mode=DeliveryMode.PERSISTENT,
        message_id=message_id,
    )


async def _relay(
    url: str, prefetch: int, pairs: Sequence[tuple[str, str]], *, serial: bool = False
) -> None:
    connection = await aio_pika.connect_robust(url, client_properties={"connection_name": "floor"})
    try:
        publish_channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = publish_channel.default_exchange
        for source, target in pairs:
            channel = await connection.channel(publisher_confirms=False)
            await channel.set_qos(prefetch_count=prefetch)
            queue = await channel.declare_queue(source, durable=True)

            # Serial (a diagnostic variant): one delivery at a time per queue, the next only
            # after the last one's publish was confirmed — as the hub's ordered consumers do.
            # The lock is fair and deliveries arrive in order, so order is kept.
            turn = asyncio.Lock() if serial else contextlib.nullcontext()

            async def handle(
                message: AbstractIncomingMessage,
                target: str = target,
                turn: contextlib.AbstractAsyncContextManager[object] = turn,
            ) -> None:
                async with turn:
                    await exchange.publish(
                        _message(message.body, message.message_id),
                        routing_key=target,
                        mandatory=True,
                    )
                    await message.ack()

            await queue.consume(handle)
        print('{"ready": true}', flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await connection.close()


async def connect_with_empty_queues(
    url: str, name: str, queues: Sequence[str]
) -> AbstractRobustConnection:
    """A robust connection named `name`, with `queues` declared durable and purged of what an
    earlier run left in them."""
    connection = await aio_pika.connect_robust(url, client_properties={"connection_name": name})
    admin = await connection.channel()
    for queue_name in queues:
        queue = await admin.declare_queue(queue_name, durable=True)
        await queue.purge()
    await admin.close()
    return connection


class FloorOrigin:
    """The harness end of the chain: a load-generation target like the frontends."""

    def __init__(self, url: str, queues: Sequence[str], body_size: int, prefetch: int) -> None:
        self.url = url
        self.queues = list(queues)
        self.body_size = body_size
        self.prefetch = prefetch
        self.slots = 1
        self._connection: AbstractRobustConnection | None = None
        self._publish: AbstractChannel | None = None
        self._consume: AbstractChannel | None = None
        self._waiting: dict[str, asyncio.Future[None]] = {}
        self._ids = itertools.count()
        self._prefix = f"f{uuid.uuid4().hex[:6]}-"

    async def declare(self) -> None:
        """Connects and declares the five queues (empty: left-overs are purged)."""
        self._connection = await connect_with_empty_queues(self.url, "floor-origin", self.queues)

    async def start(self) -> None:
        assert self._connection is not None, "declare() first"
        self._publish = await self._connection.channel(
            publisher_confirms=True, on_return_raises=True
        )
        consume = await self._connection.channel()
        self._consume = consume
        await consume.set_qos(prefetch_count=self.prefetch)
        queue = await consume.declare_queue(self.queues[-1], durable=True)
        await queue.consume(self._arrived)

    async def _arrived(self, message: AbstractIncomingMessage) -> None:
        waiter = self._waiting.pop(message.message_id or "", None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        await message.ack()

    def _body(self, message_id: str) -> bytes:
        head = b'{"message_id":"' + message_id.encode() + b'","pad":"'
        pad = max(0, self.body_size - len(head) - 2)
        return head + b"x" * pad + b'"}'

    async def roundtrip(self, slot: int) -> None:
        assert self._publish is not None, "start() first"
        message_id = f"{self._prefix}{next(self._ids)}"
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[message_id] = waiter
        try:
            async with asyncio.timeout(ROUNDTRIP_TIMEOUT):
                await self._publish.default_exchange.publish(
                    _message(self._body(message_id), message_id),
                    routing_key=self.queues[0],
                    mandatory=True,
                )
                await waiter
        finally:
            self._waiting.pop(message_id, None)

    async def close(self, *, delete: bool = True) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            async with asyncio.timeout(10):
                if self._consume is not None:
                    # Stop consuming first: deleting a queue under its consumer is noisy.
                    await self._consume.close()
                if delete:
                    channel = await connection.channel()
                    for name in self.queues:
                        await channel.queue_delete(name)
                await connection.close()
        except Exception:  # the vhost may be gone already; nothing to keep alive
            with contextlib.suppress(Exception):
                await connection.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    url = os.environ.get(URL_VARIABLE, "")
    if len(args) < 2 or not url:
        print(
            f"usage: {URL_VARIABLE}=amqp://... python -m agentcomm.bench.floor PREFETCH IN>OUT ..."
        )
        return 2
    prefetch = int(args[0])
    pairs = [(source, target) for source, _, target in (pair.partition(">") for pair in args[1:])]
    asyncio.run(_relay(url, prefetch, pairs, serial=os.environ.get(SERIAL_VARIABLE) == "1"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
