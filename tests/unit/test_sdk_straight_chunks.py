"""An agent on the bus sends the chunks of an answer to a frontend straight to the queue of the
hub that holds it; everything else (and a chunk whose hub's queue is gone) goes to the broker."""

from __future__ import annotations

from agentcomm.bus.memory import InMemoryBus
from agentcomm.protocol import Envelope, MessageType
from agentcomm.protocol.queues import BROKER_INPUT_QUEUE, server_queue
from agentcomm.sdk.transports import BusWork, straight_queue

FRONTEND = "web_cdcdcdcd" + "ab" * 12


def answer(kind: MessageType, receiver: str = FRONTEND) -> Envelope:
    fields = {"seq": 0, "text_delta": "t0 "} if kind is MessageType.REPLY_CHUNK else {}
    return Envelope(
        message_type=kind,
        sender_id="typist",
        receiver_id=receiver,
        in_reply_to_message_id="m1",
        text_payload="t0 " if kind is MessageType.REPLY else None,
        **fields,
    )


def test_only_chunks_for_a_frontend_have_a_straight_queue() -> None:
    assert straight_queue(answer(MessageType.REPLY_CHUNK)) == server_queue("cdcdcdcd")
    assert straight_queue(answer(MessageType.REPLY)) is None
    assert straight_queue(answer(MessageType.REPLY_CHUNK, receiver="other-agent")) is None


async def test_chunks_go_to_the_frontends_hub_and_the_final_reply_to_the_broker() -> None:
    bus = InMemoryBus()
    await bus.connect()
    await bus.declare_queue(BROKER_INPUT_QUEUE)
    await bus.declare_queue(server_queue("cdcdcdcd"))
    work = BusWork(bus, prefetch=4, owns_bus=True)
    try:
        await work.publish(answer(MessageType.REPLY_CHUNK))
        await work.publish(answer(MessageType.REPLY))
        assert bus.depth(server_queue("cdcdcdcd")) == 1
        assert bus.depth(BROKER_INPUT_QUEUE) == 1
    finally:
        await work.close()


async def test_a_chunk_whose_hub_has_no_queue_goes_by_the_broker() -> None:
    bus = InMemoryBus()
    await bus.connect()
    await bus.declare_queue(BROKER_INPUT_QUEUE)
    work = BusWork(bus, prefetch=4, owns_bus=True)
    try:
        await work.publish(answer(MessageType.REPLY_CHUNK))
        assert bus.depth(BROKER_INPUT_QUEUE) == 1
    finally:
        await work.close()
