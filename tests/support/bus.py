"""The test's own hands on the bus: read a queue, publish JSON, play the broker.

Everything here uses only what PROTOCOL §4 documents: queue names and JSON envelopes.
On RabbitMQ the test gets its own connection, as a separate broker or agent process would.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from agentcomm.bus.base import Bus, Delivery, Subscription
from agentcomm.config import Settings
from tests.support.waiting import DEFAULT_TIMEOUT

BROKER_INPUT_QUEUE = "broker_input_queue"
SERVER_INPUT_QUEUE = "server_input_queue"

Envelope = dict[str, Any]


def agent_queue(agent_id: str) -> str:
    return f"agent_queue_{agent_id}"


@asynccontextmanager
async def side_bus(settings: Settings, hub_bus: Bus) -> AsyncIterator[Bus]:
    """A bus for the test's broker/agent roles: the hub's own in-process bus (there is only
    one), or a second RabbitMQ connection to the same vhost."""
    if settings.message_bus == "memory":
        yield hub_bus
        return
    from agentcomm.bus.factory import create_bus

    bus = create_bus(settings, name="agentcomm-test")
    async with asyncio.timeout(DEFAULT_TIMEOUT * 2):
        await bus.connect()
    try:
        yield bus
    finally:
        async with asyncio.timeout(DEFAULT_TIMEOUT):
            await bus.close()


async def publish_json(bus: Bus, queue: str, envelope: Envelope) -> None:
    async with asyncio.timeout(DEFAULT_TIMEOUT):
        await bus.publish(
            queue,
            json.dumps(envelope).encode(),
            message_id=envelope.get("message_id"),
            timeout=DEFAULT_TIMEOUT,
        )


class QueueTap:
    """Consumes one queue and keeps each message (parsed JSON) for the test to inspect."""

    def __init__(self, bus: Bus, queue: str) -> None:
        self.bus = bus
        self.queue = queue
        self.messages: asyncio.Queue[Envelope] = asyncio.Queue()
        self.deliveries: list[Delivery] = []
        self._subscription: Subscription | None = None

    async def start(self) -> QueueTap:
        async with asyncio.timeout(DEFAULT_TIMEOUT):
            await self.bus.declare_queue(self.queue)
            self._subscription = await self.bus.consume(self.queue, self._take)
        return self

    async def _take(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)
        self.messages.put_nowait(json.loads(delivery.body))

    async def next(
        self, where: Callable[[Envelope], bool] | None = None, *, timeout: float = DEFAULT_TIMEOUT
    ) -> Envelope:
        """The next message (skipping those `where` refuses)."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    message = await self.messages.get()
                    if where is None or where(message):
                        return message
        except TimeoutError:
            raise AssertionError(f"Nothing on {self.queue} within {timeout} s") from None

    def pending(self) -> list[Envelope]:
        items = []
        while not self.messages.empty():
            items.append(self.messages.get_nowait())
        return items

    async def stop(self) -> None:
        if self._subscription is not None:
            async with asyncio.timeout(DEFAULT_TIMEOUT):
                await self._subscription.cancel()
            self._subscription = None


@asynccontextmanager
async def tap(bus: Bus, queue: str) -> AsyncIterator[QueueTap]:
    reader = await QueueTap(bus, queue).start()
    try:
        yield reader
    finally:
        await reader.stop()


def routed(message: Envelope, receiver_id: str, **changes: Any) -> Envelope:
    """What a broker publishes on server_input_queue for a message it routed."""
    return {**message, "receiver_id": receiver_id, "routing_status": "routed", **changes}


def broker_error(message: Envelope, code: str, **changes: Any) -> Envelope:
    """A broker's ERROR for `message`, addressed back to whoever sent it."""
    return {
        "message_type": "ERROR",
        "message_id": f"err-{message['message_id']}",
        "sender_id": "broker_test",
        "receiver_id": message.get("sender_id") or message.get("_client_id"),
        "text_payload": f"Could not route: {code}",
        "in_reply_to_message_id": message["message_id"],
        "routing_status": "error",
        "error_code": code,
        **{key: message[key] for key in ("_client_id", "_server_id") if key in message},
        **changes,
    }


class FakeBroker:
    """Consumes broker_input_queue and republishes each message to server_input_queue,
    routed to whoever `choose(message)` names (None: an ERROR no_agent_available instead)."""

    def __init__(self, bus: Bus, choose: Callable[[Envelope], str | None]) -> None:
        self.bus = bus
        self.choose = choose
        self.seen: list[Envelope] = []
        self._subscription: Subscription | None = None

    async def start(self) -> FakeBroker:
        async with asyncio.timeout(DEFAULT_TIMEOUT):
            self._subscription = await self.bus.consume(BROKER_INPUT_QUEUE, self._route)
        return self

    async def _route(self, delivery: Delivery) -> None:
        message = json.loads(delivery.body)
        self.seen.append(message)
        receiver = self.choose(message)
        if receiver is None:
            out = broker_error(message, "no_agent_available")
        else:
            out = routed(message, receiver)
        await publish_json(self.bus, SERVER_INPUT_QUEUE, out)

    async def stop(self) -> None:
        if self._subscription is not None:
            async with asyncio.timeout(DEFAULT_TIMEOUT):
                await self._subscription.cancel()
            self._subscription = None


def route_text_to(agent_id: str) -> Callable[[Envelope], str | None]:
    """Frontend messages go to `agent_id`; agent replies go to the receiver they name."""

    def choose(message: Envelope) -> str | None:
        if message.get("message_type") in ("TEXT", "CANCEL"):
            return agent_id
        receiver = message.get("receiver_id")
        return receiver if isinstance(receiver, str) and receiver else None

    return choose
