"""The reference broker beside a real hub on the in-process bus.

Frontend and agents are played by hand, through the documented protocol only: the frontend
speaks WebSocket (`/ws`); an agent registers over gRPC, consumes its own `agent_queue_<id>` on
the bus and publishes its answers to `broker_input_queue`, as the described system's agents
do. Every wait has a timeout; events are awaited, never slept for.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from agentcomm.broker.presence import AgentTable
from agentcomm.broker.service import BrokerStartError, ReferenceBroker
from agentcomm.bus.base import Bus, Delivery, Subscription
from agentcomm.bus.memory import InMemoryBus
from agentcomm.generated import agent_registration_service_pb2 as reg_pb
from agentcomm.generated import agent_registration_service_pb2_grpc as reg_grpc
from agentcomm.protocol.codec import decode_envelope, encode_for_bus
from agentcomm.protocol.models import Envelope
from agentcomm.protocol.queues import BROKER_INPUT_QUEUE, agent_queue
from agentcomm.protocol.vocabulary import MAX_HOPS, MessageType, RoutingStatus
from agentcomm.server.testing import HubEndpoints, running_hub
from tests.conftest import free_port

WAIT = 10.0

Frame = dict[str, Any]


class Frontend:
    """One registered WebSocket client; frames not yet asked for are kept in order."""

    def __init__(self, socket: ClientConnection, frontend_id: str) -> None:
        self.socket = socket
        self.frontend_id = frontend_id
        self._unread: list[Frame] = []

    @classmethod
    async def connect(cls, ws_url: str, name: str = "tester") -> Frontend:
        socket = await asyncio.wait_for(connect(ws_url), WAIT)
        await socket.send(
            orjson.dumps({"message_type": "REGISTER_FRONTEND", "frontend_name": name}).decode()
        )
        response = orjson.loads(await asyncio.wait_for(socket.recv(), WAIT))
        assert response["message_type"] == "REGISTER_FRONTEND_RESPONSE", response
        frontend = cls(socket, response["frontend_id"])
        await frontend.expect(lambda frame: frame["message_type"] == "AGENT_STATUS_UPDATE")
        return frontend

    async def send(self, **frame: Any) -> None:
        await asyncio.wait_for(self.socket.send(orjson.dumps(frame).decode()), WAIT)

    async def expect(self, predicate: Callable[[Frame], bool], timeout: float = WAIT) -> Frame:
        """The first frame (already received or coming) for which `predicate` holds."""
        for index, kept in enumerate(self._unread):
            if predicate(kept):
                return self._unread.pop(index)
        async with asyncio.timeout(timeout):
            while True:
                frame: Frame = orjson.loads(await self.socket.recv())
                if predicate(frame):
                    return frame
                self._unread.append(frame)

    async def expect_error(self, in_reply_to: str) -> Frame:
        return await self.expect(
            lambda frame: (
                frame["message_type"] == "ERROR"
                and frame.get("in_reply_to_message_id") == in_reply_to
            )
        )

    async def expect_reply(self, in_reply_to: str) -> Frame:
        return await self.expect(
            lambda frame: (
                frame["message_type"] == "REPLY"
                and frame.get("in_reply_to_message_id") == in_reply_to
            )
        )

    async def expect_echo(self, message_id: str, status: str) -> Frame:
        return await self.expect(
            lambda frame: (
                frame["message_type"] == "TEXT"
                and frame.get("message_id") == message_id
                and frame.get("routing_status") == status
            )
        )

    async def close(self) -> None:
        await asyncio.wait_for(self.socket.close(), WAIT)


class BusAgent:
    """An agent registered over gRPC that takes its work from its own bus queue."""

    def __init__(
        self,
        grpc_target: str,
        bus: Bus,
        agent_id: str,
        capabilities: dict[str, str] | None = None,
    ) -> None:
        self.agent_id = agent_id
        self.bus = bus
        self.capabilities = capabilities or {}
        self.inbox: asyncio.Queue[Envelope] = asyncio.Queue()
        self._channel = grpc.aio.insecure_channel(grpc_target)
        self._stub = reg_grpc.AgentRegistrationServiceStub(self._channel)
        self._subscription: Subscription | None = None

    async def start(self) -> BusAgent:
        response = await self._stub.RegisterAgent(
            reg_pb.AgentRegistrationRequest(
                agent_id=self.agent_id, agent_name=self.agent_id, capabilities=self.capabilities
            ),
            timeout=WAIT,
        )
        assert response.success, response.message
        if not self.bus.is_connected:
            await self.bus.connect()
        await self.bus.declare_queue(agent_queue(self.agent_id))
        self._subscription = await self.bus.consume(agent_queue(self.agent_id), self._take)
        return self

    async def _take(self, delivery: Delivery) -> None:
        await self.inbox.put(decode_envelope(delivery.body))

    async def next_message(self, timeout: float = WAIT) -> Envelope:
        return await asyncio.wait_for(self.inbox.get(), timeout)

    async def publish(
        self, message_type: MessageType, receiver_id: str | None, **fields: Any
    ) -> Envelope:
        envelope = Envelope.model_validate(
            {
                "message_type": message_type,
                "sender_id": self.agent_id,
                "receiver_id": receiver_id,
                "routing_status": RoutingStatus.PENDING,
            }
            | fields
        )
        await self.bus.publish(
            BROKER_INPUT_QUEUE, encode_for_bus(envelope), message_id=envelope.message_id
        )
        return envelope

    async def reply_to(self, message: Envelope, text: str) -> Envelope:
        return await self.publish(
            MessageType.REPLY,
            message.sender_id,
            text_payload=text,
            in_reply_to_message_id=message.message_id,
            conversation_id=message.conversation_id,
        )

    async def unregister(self) -> None:
        await self._stub.UnregisterAgent(
            reg_pb.AgentUnregistrationRequest(agent_id=self.agent_id), timeout=WAIT
        )

    async def stop(self) -> None:
        if self._subscription is not None:
            await asyncio.wait_for(self._subscription.cancel(), WAIT)
            self._subscription = None
        await self._channel.close(grace=None)


# -- the stack under test ----------------------------------------------------------------------


def agent_online(agent_id: str) -> Callable[[AgentTable], bool]:
    def check(table: AgentTable) -> bool:
        agent = table.agents.get(agent_id)
        return agent is not None and agent.is_online

    return check


def agent_offline(agent_id: str) -> Callable[[AgentTable], bool]:
    def check(table: AgentTable) -> bool:
        agent = table.agents.get(agent_id)
        return agent is not None and not agent.is_online

    return check


@dataclass
class Stack:
    """A hub, a broker on the hub's bus, and the peers a test adds."""

    hub: HubEndpoints
    broker: ReferenceBroker
    peers: list[BusAgent | Frontend] = field(default_factory=list)

    async def agent(self, agent_id: str, capabilities: dict[str, str] | None = None) -> BusAgent:
        agent = BusAgent(self.hub.grpc_target, self.hub.bus, agent_id, capabilities)
        self.peers.append(agent)
        await agent.start()
        await asyncio.wait_for(self.broker.wait_for_presence(agent_online(agent_id)), WAIT)
        return agent

    async def frontend(self) -> Frontend:
        frontend = await Frontend.connect(self.hub.ws_url)
        self.peers.append(frontend)
        return frontend

    async def close_peers(self) -> None:
        for peer in reversed(self.peers):
            await (peer.close() if isinstance(peer, Frontend) else peer.stop())


@asynccontextmanager
async def broker_beside(hub: HubEndpoints, **options: Any) -> AsyncIterator[ReferenceBroker]:
    broker = ReferenceBroker(hub.bus, hub.grpc_target, start_timeout=WAIT, **options)
    await asyncio.wait_for(broker.start(), WAIT)
    try:
        yield broker
    finally:
        await asyncio.wait_for(broker.stop(), WAIT)


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    async with running_hub() as hub, broker_beside(hub, broker_name="test-broker") as broker:
        stack = Stack(hub, broker)
        try:
            yield stack
        finally:
            await stack.close_peers()


# -- tests -------------------------------------------------------------------------------------


async def test_broker_registers_and_follows_the_status_stream(stack: Stack) -> None:
    record = stack.hub.hub.brokers.get(stack.broker.broker_id)
    assert record is not None
    assert record.broker_name == "test-broker"
    assert record.is_online
    assert not stack.broker.table.stale


async def test_chat_turn_without_receiver(stack: Stack) -> None:
    agent = await stack.agent("helper")
    frontend = await stack.frontend()
    await frontend.send(message_type="TEXT", message_id="t-1", text_payload="hello")

    work = await agent.next_message()
    assert (work.message_id, work.sender_id, work.receiver_id) == (
        "t-1",
        frontend.frontend_id,
        "helper",
    )
    routed = await frontend.expect_echo("t-1", "routed")
    assert routed["receiver_id"] == "helper"

    await agent.reply_to(work, "hi there")
    reply = await frontend.expect_reply("t-1")
    assert reply["text_payload"] == "hi there"
    assert reply["sender_id"] == "helper"
    # The reply may reach the frontend just before the broker records it; stopping waits.
    await asyncio.wait_for(stack.broker.stop(), WAIT)
    assert stack.broker.router.ledger.unanswered("helper") == 0


async def test_named_agent_gets_it_and_unknown_agent_is_refused(stack: Stack) -> None:
    await stack.agent("one")
    two = await stack.agent("two")
    frontend = await stack.frontend()
    await frontend.send(message_type="TEXT", message_id="t-2", text_payload="x", receiver_id="two")
    assert (await two.next_message()).message_id == "t-2"

    await frontend.send(
        message_type="TEXT", message_id="t-3", text_payload="x", receiver_id="ghost"
    )
    error = await frontend.expect_error("t-3")
    assert error["error_code"] == "agent_offline"
    assert "ghost" in error["text_payload"]


async def test_no_agent_online_is_no_agent_available(stack: Stack) -> None:
    frontend = await stack.frontend()
    await frontend.send(message_type="TEXT", message_id="t-4", text_payload="anyone?")
    error = await frontend.expect_error("t-4")
    assert error["error_code"] == "no_agent_available"


async def test_agent_that_unregisters_is_offline_for_the_broker(stack: Stack) -> None:
    agent = await stack.agent("leaving")
    await agent.unregister()
    await asyncio.wait_for(stack.broker.wait_for_presence(agent_offline("leaving")), WAIT)
    frontend = await stack.frontend()
    await frontend.send(
        message_type="TEXT", message_id="t-5", text_payload="x", receiver_id="leaving"
    )
    assert (await frontend.expect_error("t-5"))["error_code"] == "agent_offline"


async def test_capabilities_and_conversations_choose_the_agent(stack: Stack) -> None:
    plain = await stack.agent("plain")
    coder = await stack.agent("coder", {"lang": "python"})
    frontend = await stack.frontend()

    await frontend.send(
        message_type="TEXT",
        message_id="t-6",
        text_payload="write code",
        conversation_id="conv-1",
        metadata={"required_capabilities": {"lang": "python"}},
    )
    assert (await coder.next_message()).message_id == "t-6"
    # Same conversation, no requirement: it stays with the agent that served it, although
    # that agent has one unanswered message and the other none.
    await frontend.send(
        message_type="TEXT", message_id="t-7", text_payload="more", conversation_id="conv-1"
    )
    assert (await coder.next_message()).message_id == "t-7"
    # A new conversation goes to the least busy agent.
    await frontend.send(message_type="TEXT", message_id="t-8", text_payload="hi")
    assert (await plain.next_message()).message_id == "t-8"

    await frontend.send(
        message_type="TEXT",
        message_id="t-9",
        text_payload="x",
        metadata={"required_capabilities": ["gpu"]},
    )
    error = await frontend.expect_error("t-9")
    assert error["error_code"] == "no_agent_available"
    assert "gpu" in error["text_payload"]


async def test_cancel_goes_to_the_agent_handling_the_text(stack: Stack) -> None:
    await stack.agent("a")
    b = await stack.agent("b")
    frontend = await stack.frontend()
    await frontend.send(message_type="TEXT", message_id="t-10", text_payload="x", receiver_id="b")
    assert (await b.next_message()).message_id == "t-10"
    await frontend.send(message_type="CANCEL", message_id="c-10", in_reply_to_message_id="t-10")
    cancel = await b.next_message()
    assert cancel.message_type is MessageType.CANCEL
    assert cancel.in_reply_to_message_id == "t-10"


async def test_agent_messages_go_where_they_are_addressed(stack: Stack) -> None:
    a = await stack.agent("a")
    b = await stack.agent("b")
    frontend = await stack.frontend()

    await a.publish(MessageType.SYSTEM, "b", text_payload="note for b")
    note = await b.next_message()
    assert (note.sender_id, note.text_payload) == ("a", "note for b")

    # SYSTEM reaches a frontend that wrote to the agent (issue 21: before, any frontend whose
    # id the agent had learned); b, which the frontend never wrote to, is refused.
    await frontend.send(message_type="TEXT", message_id="t-sys", text_payload="x", receiver_id="a")
    assert (await a.next_message()).message_id == "t-sys"
    await b.publish(MessageType.SYSTEM, frontend.frontend_id, text_payload="unasked")
    refused = await b.next_message()
    assert (refused.message_type, refused.error_code) == (MessageType.ERROR, "unknown_receiver")
    await a.publish(MessageType.SYSTEM, frontend.frontend_id, text_payload="note for you")
    seen = await frontend.expect(lambda frame: frame["message_type"] == "SYSTEM")
    assert seen["text_payload"] == "note for you"

    sent = await a.publish(MessageType.REPLY, None, text_payload="to whom?")
    error = await a.next_message()
    assert error.message_type is MessageType.ERROR
    assert error.error_code == "unknown_receiver"
    assert error.in_reply_to_message_id == sent.message_id


async def test_looping_message_ends_in_hop_limit(stack: Stack) -> None:
    await stack.agent("a")
    frontend = await stack.frontend()
    looping = Envelope.model_validate(
        {
            "message_type": "TEXT",
            "message_id": "t-loop",
            "sender_id": frontend.frontend_id,
            "text_payload": "round and round",
            "routing_status": "pending",
            "_client_id": frontend.frontend_id,
            "_server_id": stack.hub.hub.server_id,
            "_hops": MAX_HOPS + 1,
        }
    )
    await stack.hub.bus.publish(
        BROKER_INPUT_QUEUE, encode_for_bus(looping), message_id=looping.message_id
    )
    assert (await frontend.expect_error("t-loop"))["error_code"] == "hop_limit"


async def test_bad_bus_message_is_dropped_and_routing_goes_on(stack: Stack) -> None:
    agent = await stack.agent("a")
    await stack.hub.bus.publish(BROKER_INPUT_QUEUE, b"{not json")
    frontend = await stack.frontend()
    await frontend.send(message_type="TEXT", message_id="t-11", text_payload="still there?")
    assert (await agent.next_message()).message_id == "t-11"
    assert stack.broker.stats.dropped == 1


async def test_start_fails_clearly_without_a_server() -> None:
    bus = InMemoryBus()
    broker = ReferenceBroker(bus, f"127.0.0.1:{free_port()}", start_timeout=0.5)
    try:
        with pytest.raises(BrokerStartError, match="Cannot register with the server"):
            await asyncio.wait_for(broker.start(), WAIT)
        assert not broker.is_running
    finally:
        await bus.close()
