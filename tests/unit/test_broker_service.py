"""The broker's bus handler on the in-process bus: output first, ack after, bad input dropped."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator

import orjson
import pytest

from agentcomm.broker.service import ReferenceBroker
from agentcomm.bus.base import BusUnavailable, Delivery
from agentcomm.bus.memory import InMemoryBus
from agentcomm.protocol.codec import decode_envelope, encode_for_bus
from agentcomm.protocol.models import AgentInfo, Envelope
from agentcomm.protocol.queues import BROKER_INPUT_QUEUE, SERVER_INPUT_QUEUE
from agentcomm.protocol.vocabulary import AgentState, ErrorCode, MessageType, RoutingStatus

WEB = "web_00112233445566778899aabbccddeeff"


class FlakyBus(InMemoryBus):
    """Refuses the first `failures` publishes of broker output, as a bus without confirms would."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def publish(
        self,
        queue: str,
        body: bytes,
        *,
        message_id: str | None = None,
        mandatory: bool = True,
        timeout: float = 5.0,
    ) -> None:
        if queue == SERVER_INPUT_QUEUE and self.failures > 0:
            self.failures -= 1
            raise BusUnavailable("no confirm")
        await super().publish(
            queue, body, message_id=message_id, mandatory=mandatory, timeout=timeout
        )


async def outputs(bus: InMemoryBus) -> AsyncGenerator[Envelope, None]:
    queue: asyncio.Queue[Envelope] = asyncio.Queue()

    async def take(delivery: Delivery) -> None:
        await queue.put(decode_envelope(delivery.body))

    subscription = await bus.consume(SERVER_INPUT_QUEUE, take)
    try:
        while True:
            yield await asyncio.wait_for(queue.get(), 5)
    finally:
        await subscription.cancel()


async def ready_bus(bus: InMemoryBus) -> InMemoryBus:
    await bus.connect()
    await bus.declare_queue(BROKER_INPUT_QUEUE)
    await bus.declare_queue(SERVER_INPUT_QUEUE)
    return bus


def delivery(body: bytes) -> Delivery:
    return Delivery(queue=BROKER_INPUT_QUEUE, body=body, message_id="m", redelivered=False)


def broker_with_agent(bus: InMemoryBus) -> ReferenceBroker:
    # handle() needs no gRPC: the agent table is filled by hand, as the stream would fill it.
    broker = ReferenceBroker(bus, "127.0.0.1:1", broker_id="broker_t")
    broker.table.apply(
        [
            AgentInfo(
                agent_id="a",
                agent_name="A",
                is_online=True,
                last_seen="2026-01-01T00:00:00Z",
                status=AgentState.ONLINE,
            )
        ],
        full=True,
    )
    return broker


def text_body(**fields: object) -> bytes:
    envelope = Envelope.model_validate(
        {"message_type": "TEXT", "sender_id": WEB, "text_payload": "hi", "_client_id": WEB} | fields
    )
    return encode_for_bus(envelope)


@pytest.fixture
async def bus() -> AsyncIterator[InMemoryBus]:
    bus = await ready_bus(InMemoryBus())
    yield bus
    await bus.close()


async def test_routed_message_is_published_before_the_handler_returns(bus: InMemoryBus) -> None:
    broker = broker_with_agent(bus)
    await asyncio.wait_for(broker.handle(delivery(text_body(message_id="t1"))), 5)
    assert bus.depth(SERVER_INPUT_QUEUE) == 1
    stream = outputs(bus)
    routed = await anext(stream)
    await stream.aclose()
    assert (routed.message_id, routed.receiver_id) == ("t1", "a")
    assert routed.routing_status is RoutingStatus.ROUTED
    assert broker.stats.routed == 1
    assert broker.router.ledger.unanswered("a") == 1


async def test_failed_publish_raises_and_its_redelivery_counts_once() -> None:
    bus = await ready_bus(FlakyBus(failures=1))
    try:
        broker = broker_with_agent(bus)
        message = delivery(text_body(message_id="t1", conversation_id="c"))
        with pytest.raises(BusUnavailable):
            await asyncio.wait_for(broker.handle(message), 5)
        assert broker.stats.routed == 0
        # The bus hands the message back; handling it again must not count it twice.
        await asyncio.wait_for(broker.handle(message), 5)
        assert broker.router.ledger.unanswered("a") == 1
        assert broker.router.ledger.agent_for_conversation("c") == "a"
        assert broker.stats.routed == 1
    finally:
        await bus.close()


async def test_message_is_redelivered_until_its_output_is_confirmed() -> None:
    bus = await ready_bus(FlakyBus(failures=2))
    try:
        broker = broker_with_agent(bus)
        subscription = await bus.consume(BROKER_INPUT_QUEUE, broker.handle)
        stream = outputs(bus)
        await bus.publish(BROKER_INPUT_QUEUE, text_body(message_id="t1"))
        routed = await anext(stream)
        assert routed.message_id == "t1"
        assert broker.stats.routed == 1
        await stream.aclose()
        await subscription.cancel()
    finally:
        await bus.close()


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[1, 2]", b'{"message_type": "TEXT", "sender_id": 5}', b"{}"],
)
async def test_undecodable_message_without_sender_is_dropped(bus: InMemoryBus, body: bytes) -> None:
    broker = broker_with_agent(bus)
    await asyncio.wait_for(broker.handle(delivery(body)), 5)
    assert bus.depth(SERVER_INPUT_QUEUE) == 0
    assert broker.stats.dropped == 1


async def test_invalid_message_with_a_sender_gets_an_error(bus: InMemoryBus) -> None:
    broker = broker_with_agent(bus)
    body = orjson.dumps(
        {"message_type": "SHOUT", "sender_id": WEB, "message_id": "x1", "_client_id": WEB}
    )
    await asyncio.wait_for(broker.handle(delivery(body)), 5)
    stream = outputs(bus)
    error = await anext(stream)
    await stream.aclose()
    assert error.message_type is MessageType.ERROR
    assert error.error_code == ErrorCode.UNSUPPORTED_TYPE
    assert (error.receiver_id, error.in_reply_to_message_id) == (WEB, "x1")


async def test_consumer_survives_bad_input_and_keeps_routing(bus: InMemoryBus) -> None:
    broker = broker_with_agent(bus)
    subscription = await bus.consume(BROKER_INPUT_QUEUE, broker.handle)
    stream = outputs(bus)
    try:
        await bus.publish(BROKER_INPUT_QUEUE, b"\xff garbage")
        await bus.publish(BROKER_INPUT_QUEUE, text_body(message_id="after"))
        routed = await anext(stream)
        assert routed.message_id == "after"
        assert broker.stats.dropped == 1
    finally:
        await stream.aclose()
        await subscription.cancel()


async def test_a_message_the_broker_cannot_route_is_answered_not_redelivered(
    bus: InMemoryBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = broker_with_agent(bus)

    def cannot(*args: object, **kwargs: object) -> None:
        raise ValueError("Maximum serialization depth exceeded")

    monkeypatch.setattr(broker.router, "decide", cannot)
    # Returns (the bus acks): redelivering would fail the same way.
    await asyncio.wait_for(broker.handle(delivery(text_body(message_id="t-bad"))), 5)
    stream = outputs(bus)
    error = await anext(stream)
    await stream.aclose()
    assert (error.message_type, error.error_code) == (MessageType.ERROR, ErrorCode.INTERNAL)
    assert (error.receiver_id, error.in_reply_to_message_id) == (WEB, "t-bad")
    assert "Maximum" not in (error.text_payload or "")


async def test_a_message_given_up_on_is_answered(bus: InMemoryBus) -> None:
    broker = broker_with_agent(bus)
    given_up = Delivery(
        queue=BROKER_INPUT_QUEUE,
        body=text_body(message_id="t-gone"),
        message_id="t-gone",
        redelivered=True,
        attempt=5,
    )
    await asyncio.wait_for(broker._gave_up(given_up), 5)
    stream = outputs(bus)
    error = await anext(stream)
    await stream.aclose()
    assert (error.error_code, error.in_reply_to_message_id) == (ErrorCode.INTERNAL, "t-gone")
