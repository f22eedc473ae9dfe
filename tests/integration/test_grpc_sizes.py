"""Sizes on the agent's gRPC streams: a backlog of large messages reaches the agent in batches
it can take, and what the agent writes on SendOutputs is refused item by item, never by ending
the stream for everything else on it."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import grpc
import pytest

from agentcomm.bus.memory import InMemoryBus
from agentcomm.generated import agent_registration_service_pb2 as reg_pb
from agentcomm.protocol import Envelope, MessageType
from agentcomm.sdk.hub_client import GrpcHubClient, IncomingMessage, RegistrationRequest
from agentcomm.sdk.transports import GrpcWork
from agentcomm.server.grpc import outputs as grpc_outputs
from agentcomm.server.grpc.inboxes import MAX_BATCH_BYTES, AgentInbox
from agentcomm.server.testing import running_hub, test_settings
from tests.support.agent import GrpcAgent, StreamReader
from tests.support.bus import BROKER_INPUT_QUEUE, agent_queue, publish_json, tap
from tests.support.waiting import DEFAULT_TIMEOUT, wait_until

Code = grpc.StatusCode
KIB = 1024


def text_for(agent_id: str, payload: str = "hello") -> dict[str, Any]:
    return {
        "message_type": "TEXT",
        "message_id": uuid.uuid4().hex,
        "sender_id": "web_" + "a" * 32,
        "receiver_id": agent_id,
        "text_payload": payload,
        "routing_status": "routed",
    }


# -- ReceiveMessageBatches ------------------------------------------------------------------------


async def test_a_backlog_of_large_messages_is_batched_by_bytes() -> None:
    bus = InMemoryBus()
    await bus.connect()
    inbox = AgentInbox(bus, "big-backlog", prefetch=40)
    await bus.declare_queue(agent_queue("big-backlog"))
    await inbox.open()
    try:
        sent = [text_for("big-backlog", "x" * (60 * KIB)) for _ in range(40)]
        for text in sent:
            await publish_json(bus, agent_queue("big-backlog"), text)
        # All of them handed over and waiting to be written: one drain could take them all.
        await wait_until(lambda: inbox._outgoing.qsize() == len(sent), what="the backlog")
        got: list[str] = []
        while len(got) < len(sent):
            async with asyncio.timeout(DEFAULT_TIMEOUT):
                batch = await inbox.next_batch()
            assert batch
            assert len(batch) == 1 or sum(len(i.body) for i in batch) <= MAX_BATCH_BYTES
            got.extend(item.message_id for item in batch)
            for item in batch:
                inbox.acknowledge(item.message_id, True)
        # In order, each once.
        assert got == [text["message_id"] for text in sent]
    finally:
        await inbox.close()
        await bus.close()


async def test_an_agent_takes_a_backlog_larger_than_grpcs_default_receive_limit() -> None:
    async with running_hub(test_settings()) as hub:
        sent = [text_for("backlogged", "x" * (60 * KIB)) for _ in range(100)]
        await hub.hub.declare_agent_queue("backlogged")
        for text in sent:
            await publish_json(hub.bus, agent_queue("backlogged"), text)
        async with GrpcAgent(hub.grpc_target, "backlogged", session="s") as agent:
            await agent.register()
            call = agent.stub.ReceiveMessageBatches(
                reg_pb.MessageStreamRequest(agent_id="backlogged", prefetch=200),
                metadata=agent.metadata,
            )
            batches: StreamReader[reg_pb.ChatMessages] = StreamReader(call)
            try:
                got: list[str] = []
                while len(got) < len(sent):
                    batch = await batches.next()
                    # Well within gRPC's default 4 MiB, which this plain channel keeps.
                    assert batch.ByteSize() <= 2 * MAX_BATCH_BYTES
                    got.extend(message.message_id for message in batch.messages)
                assert sorted(got) == sorted(text["message_id"] for text in sent)
                assert batches.error is None
            finally:
                await batches.cancel()


async def test_the_sdk_takes_a_message_larger_than_grpcs_default_receive_limit() -> None:
    async with running_hub(test_settings(max_message_bytes=8 * KIB * KIB)) as hub:
        client = GrpcHubClient(hub.grpc_target, "session-large")
        try:
            await client.register(RegistrationRequest("large-one", "large", "1"))
            await hub.hub.declare_agent_queue("large-one")
            text = text_for("large-one", "x" * (5 * KIB * KIB))
            await publish_json(hub.bus, agent_queue("large-one"), text)
            stream = client.messages("large-one", 4)
            try:
                async with asyncio.timeout(DEFAULT_TIMEOUT):
                    incoming: IncomingMessage = await anext(stream)
            finally:
                await stream.aclose()
            assert incoming.message_id == text["message_id"]
            assert json.loads(incoming.envelope_json)["text_payload"] == text["text_payload"]
        finally:
            await client.close()


# -- the ack that goes with a final answer --------------------------------------------------------


class _AckLost(GrpcHubClient):
    """Publishes every answer, but the ack that goes with a final one is not applied, as when
    the stream it went on was being reopened."""

    async def send_message(
        self, agent_id: str, envelope: Envelope, *, ack: str = "", traceparent: str = ""
    ) -> bool:
        await super().send_message(agent_id, envelope, traceparent=traceparent)
        return False


async def test_a_final_answer_whose_ack_was_not_applied_is_acked_on_its_own() -> None:
    async with (
        running_hub(test_settings()) as hub,
        tap(hub.bus, BROKER_INPUT_QUEUE) as replies,
    ):
        client = _AckLost(hub.grpc_target, "session-ack")
        work = GrpcWork(client, prefetch=4)

        async def handle(message: Envelope) -> None:
            await work.publish(
                Envelope(
                    message_type=MessageType.REPLY,
                    receiver_id=message.sender_id,
                    in_reply_to_message_id=message.message_id,
                    text_payload="done",
                )
            )

        try:
            await client.register(RegistrationRequest("acker", "acker", "1"))
            receiving = asyncio.create_task(work.receive("acker", handle))
            try:
                text = text_for("acker")
                await publish_json(hub.bus, agent_queue("acker"), text)
                reply = await replies.next()
                assert reply["in_reply_to_message_id"] == text["message_id"]
                # Handled, and its ack (or the attempt) is over.
                await wait_until(lambda: not work._in_hand, what="the message to be finished")
                inbox = hub.hub.inboxes.get("acker")
                assert inbox is not None
                assert text["message_id"] not in inbox._awaiting_ack
            finally:
                receiving.cancel()
                await asyncio.gather(receiving, return_exceptions=True)
        finally:
            await work.close()
            await client.close()


# -- SendOutputs ----------------------------------------------------------------------------------


def reply_to(text: dict[str, Any], payload: str = "echo") -> str:
    return json.dumps(
        {
            "message_type": "REPLY",
            "message_id": uuid.uuid4().hex,
            "receiver_id": text["sender_id"],
            "in_reply_to_message_id": text["message_id"],
            "text_payload": payload,
        }
    )


async def test_an_envelope_over_the_limit_is_refused_alone_in_its_request() -> None:
    async with (
        running_hub(test_settings(max_message_bytes=4 * KIB)) as hub,
        GrpcAgent(hub.grpc_target, "sizes", session="s") as agent,
    ):
        await agent.register()
        call = agent.stub.SendOutputs(metadata=agent.metadata)
        text = text_for("sizes")
        large = reg_pb.AgentOutput(ref=1, envelope_json=reply_to(text, "x" * (5 * KIB)))
        small = reg_pb.AgentOutput(ref=2, envelope_json=reply_to(text))
        async with asyncio.timeout(DEFAULT_TIMEOUT):
            await call.write(reg_pb.AgentOutputs(agent_id="sizes", items=[large, small]))
            results: dict[int, reg_pb.AgentOutputResult] = {}
            while len(results) < 2:
                response = await call.read()
                assert isinstance(response, reg_pb.AgentOutputResults)
                results.update((result.ref, result) for result in response.results)
            await call.done_writing()
        assert results[1].code == Code.INVALID_ARGUMENT.value[0]
        assert "larger than" in results[1].detail
        assert (results[2].code, results[2].accepted) == (0, True)


async def test_the_sdk_keeps_each_write_within_what_the_server_accepts() -> None:
    # The agent allows itself far larger messages than the server: what it batches must still
    # fit the server's limit.
    async with (
        running_hub(test_settings()) as hub,
        tap(hub.bus, BROKER_INPUT_QUEUE) as replies,
    ):
        client = GrpcHubClient(hub.grpc_target, "session-sizes", max_message_bytes=4 * KIB * KIB)
        try:
            await client.register(RegistrationRequest("batcher", "batcher", "1"))
            text = text_for("batcher")
            answers = [
                Envelope.model_validate_json(reply_to(text, "x" * (30 * KIB))) for _ in range(20)
            ]
            async with asyncio.timeout(DEFAULT_TIMEOUT):
                # All submitted before the first write: they could share one.
                await asyncio.gather(
                    *(client.send_message("batcher", answer) for answer in answers)
                )
            published = {(await replies.next())["message_id"] for _ in answers}
            assert published == {answer.message_id for answer in answers}
        finally:
            await client.close()


async def test_an_agent_that_does_not_read_its_results_stops_being_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    limit = 16
    monkeypatch.setattr(grpc_outputs, "MAX_ITEMS_IN_FLIGHT", limit)
    streams: list[grpc_outputs.AgentOutputStream] = []

    class Recorded(grpc_outputs.AgentOutputStream):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            streams.append(self)

    monkeypatch.setattr(grpc_outputs, "AgentOutputStream", Recorded)
    async with (
        running_hub(test_settings()) as hub,
        GrpcAgent(hub.grpc_target, "deaf", session="s") as agent,
    ):
        await agent.register()
        inbox = agent.stub.ReceiveMessageBatches(
            reg_pb.MessageStreamRequest(agent_id="deaf"), metadata=agent.metadata
        )
        deliveries: StreamReader[reg_pb.ChatMessages] = StreamReader(inbox)
        call = agent.stub.SendOutputs(metadata=agent.metadata)

        async def write() -> None:
            # Acks of messages never delivered: each is answered at once, NOT_FOUND, with a
            # result as large as its id.
            refs = iter(range(1, 1_000_000))
            for _ in range(500):
                items = [
                    reg_pb.AgentOutput(ref=next(refs), ack_message_id=f"{n:0128d}")
                    for n in range(200)
                ]
                await call.write(reg_pb.AgentOutputs(agent_id="deaf", items=items))

        writer = asyncio.create_task(write())
        try:
            # Until the server stops reading, or (without a bound) until everything was written.
            await wait_until(
                lambda: writer.done() or (bool(streams) and streams[0]._slots.locked()),
                timeout=60,
                what="the server to stop reading, or the writes to end",
            )
            assert streams[0]._results.qsize() <= limit
        finally:
            writer.cancel()
            call.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            await deliveries.cancel()
