"""SendOutputs and ReceiveMessageBatches on a real hub: each item does what its unary call would
(the ack of a final answer only once the answer was published), a bad item is refused alone,
the caller may only speak for its own agent, and the SDK uses the stream where the server
offers it and the unary calls where it does not."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest

from agentcomm.core.auth import Authenticator, Role
from agentcomm.generated import agent_registration_service_pb2 as reg_pb
from agentcomm.generated import agent_registration_service_pb2_grpc as reg_grpc
from agentcomm.grpc_channel import REQUEST_BYTES_ACCEPTED
from agentcomm.protocol import Envelope, MessageType
from agentcomm.sdk.hub_client import GrpcHubClient, IncomingMessage, RegistrationRequest
from agentcomm.server.grpc.agents import AgentRegistrationServicer
from agentcomm.server.grpc.malformed import RejectMalformedRequests
from agentcomm.server.testing import HubEndpoints, running_hub, test_settings
from tests.support.agent import GrpcAgent, StreamReader
from tests.support.bus import BROKER_INPUT_QUEUE, QueueTap, agent_queue, publish_json, tap
from tests.support.fuzzing import mutated
from tests.support.waiting import DEFAULT_TIMEOUT

Code = grpc.StatusCode
MAX_BYTES = 4096
SECRET = "a-test-secret-that-is-long-enough-for-hs256"


def text_for(agent_id: str, message_id: str | None = None) -> dict[str, Any]:
    return {
        "message_type": "TEXT",
        "message_id": message_id or uuid.uuid4().hex,
        "sender_id": "web_" + "a" * 32,
        "receiver_id": agent_id,
        "text_payload": "hello",
        "routing_status": "routed",
    }


def reply_to(text: dict[str, Any], **changes: Any) -> str:
    return json.dumps(
        {
            "message_type": "REPLY",
            "message_id": uuid.uuid4().hex,
            "receiver_id": text["sender_id"],
            "in_reply_to_message_id": text["message_id"],
            "text_payload": "echo: hello",
            **changes,
        }
    )


class OutputCall:
    """One SendOutputs stream, written and read by the test."""

    def __init__(self, agent: GrpcAgent, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.agent_id = agent.agent_id
        self.call = agent.stub.SendOutputs(metadata=agent.metadata + metadata)
        self._results: dict[int, reg_pb.AgentOutputResult] = {}
        self._refs = iter(range(1, 1_000_000))

    async def send(self, *items: reg_pb.AgentOutput, agent_id: str | None = None) -> None:
        outputs = reg_pb.AgentOutputs(agent_id=self.agent_id if agent_id is None else agent_id)
        outputs.items.extend(items)
        async with asyncio.timeout(DEFAULT_TIMEOUT):
            await self.call.write(outputs)

    def item(
        self, envelope_json: str = "", ack: str = "", handled: bool = True
    ) -> reg_pb.AgentOutput:
        return reg_pb.AgentOutput(
            ref=next(self._refs), envelope_json=envelope_json, ack_message_id=ack, handled=handled
        )

    async def result(self, ref: int) -> reg_pb.AgentOutputResult:
        async with asyncio.timeout(DEFAULT_TIMEOUT):
            while ref not in self._results:
                response = await self.call.read()
                assert response is not grpc.aio.EOF, "the stream ended"
                for result in response.results:
                    self._results[result.ref] = result
        return self._results.pop(ref)

    async def one(self, item: reg_pb.AgentOutput) -> reg_pb.AgentOutputResult:
        await self.send(item)
        return await self.result(item.ref)

    async def ended_with(self) -> Code:
        try:
            async with asyncio.timeout(DEFAULT_TIMEOUT):
                while await self.call.read() is not grpc.aio.EOF:
                    pass
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return Code.OK


@asynccontextmanager
async def working_agent(
    hub: HubEndpoints, agent_id: str
) -> AsyncIterator[tuple[GrpcAgent, StreamReader[reg_pb.ChatMessages]]]:
    """A registered agent with its ReceiveMessageBatches stream open."""
    async with GrpcAgent(hub.grpc_target, agent_id, session=f"s-{agent_id}") as agent:
        await agent.register()
        call = agent.stub.ReceiveMessageBatches(
            reg_pb.MessageStreamRequest(agent_id=agent_id), metadata=agent.metadata
        )
        messages: StreamReader[reg_pb.ChatMessages] = StreamReader(call)
        async with asyncio.timeout(DEFAULT_TIMEOUT):
            await call.initial_metadata()
        try:
            yield agent, messages
        finally:
            await messages.cancel()


async def delivered(
    hub: HubEndpoints, messages: StreamReader[reg_pb.ChatMessages], agent_id: str
) -> dict[str, Any]:
    """Puts a TEXT in the agent's queue and returns it once it came on the stream."""
    text = text_for(agent_id)
    await publish_json(hub.bus, agent_queue(agent_id), text)
    batch = await messages.next()
    assert [m.message_id for m in batch.messages] == [text["message_id"]]
    assert json.loads(batch.messages[0].envelope_json)["text_payload"] == "hello"
    return text


def awaiting_ack(hub: HubEndpoints, agent_id: str, message_id: str) -> bool:
    inbox = hub.hub.inboxes.get(agent_id)
    return inbox is not None and message_id in inbox._awaiting_ack


@pytest.fixture
async def hub() -> AsyncIterator[HubEndpoints]:
    async with running_hub(test_settings(max_message_bytes=MAX_BYTES)) as endpoints:
        yield endpoints


@pytest.fixture
async def replies(hub: HubEndpoints) -> AsyncIterator[QueueTap]:
    async with tap(hub.bus, BROKER_INPUT_QUEUE) as reader:
        yield reader


# -- what each item does --------------------------------------------------------------------------


async def test_a_reply_carries_the_ack_of_its_message(hub: HubEndpoints, replies: QueueTap) -> None:
    async with working_agent(hub, "echo-1") as (agent, messages):
        text = await delivered(hub, messages, "echo-1")
        assert awaiting_ack(hub, "echo-1", text["message_id"])
        outputs = OutputCall(agent)
        result = await outputs.one(outputs.item(reply_to(text), ack=text["message_id"]))
        assert (result.code, result.accepted, result.acknowledged) == (0, True, True)
        published = await replies.next()
        assert published["message_type"] == "REPLY"
        assert published["sender_id"] == "echo-1"
        assert published["message_id"] == result.message_id
        assert published["in_reply_to_message_id"] == text["message_id"]
        assert not awaiting_ack(hub, "echo-1", text["message_id"])
        # The stream goes on: the next message's ack alone, then an envelope alone.
        second = await delivered(hub, messages, "echo-1")
        result = await outputs.one(outputs.item(ack=second["message_id"]))
        assert (result.code, result.accepted, result.acknowledged) == (0, False, True)
        result = await outputs.one(outputs.item(reply_to(second)))
        assert (result.code, result.accepted, result.acknowledged) == (0, True, False)


async def test_several_items_in_one_request_are_each_answered(
    hub: HubEndpoints, replies: QueueTap
) -> None:
    async with working_agent(hub, "echo-2") as (agent, messages):
        texts = []
        for _ in range(5):
            text = text_for("echo-2")
            await publish_json(hub.bus, agent_queue("echo-2"), text)
            texts.append(text)
        got: list[str] = []
        while len(got) < len(texts):
            got.extend(m.message_id for m in (await messages.next()).messages)
        assert sorted(got) == sorted(t["message_id"] for t in texts)
        outputs = OutputCall(agent)
        items = [outputs.item(reply_to(t), ack=t["message_id"]) for t in texts]
        await outputs.send(*items)
        for item in items:
            result = await outputs.result(item.ref)
            assert (result.code, result.accepted, result.acknowledged) == (0, True, True)
        assert len([await replies.next() for _ in texts]) == len(texts)


async def test_an_ack_with_handled_false_gives_the_message_back(hub: HubEndpoints) -> None:
    async with working_agent(hub, "echo-3") as (agent, messages):
        text = await delivered(hub, messages, "echo-3")
        outputs = OutputCall(agent)
        result = await outputs.one(outputs.item(ack=text["message_id"], handled=False))
        assert (result.code, result.acknowledged) == (0, True)
        again = await messages.next()
        assert [m.message_id for m in again.messages] == [text["message_id"]]


BAD_ITEMS: list[tuple[str, Callable[[dict[str, Any]], dict[str, Any]], Code]] = [
    ("empty", lambda t: {}, Code.INVALID_ARGUMENT),
    (
        "not-json",
        lambda t: {"envelope_json": "{nope", "ack_message_id": t["message_id"]},
        Code.INVALID_ARGUMENT,
    ),
    (
        "text-from-an-agent-to-a-frontend",
        lambda t: {
            "envelope_json": reply_to(t, message_type="TEXT"),
            "ack_message_id": t["message_id"],
        },
        Code.INVALID_ARGUMENT,
    ),
    ("bad-ack-id", lambda t: {"ack_message_id": "not an id!"}, Code.INVALID_ARGUMENT),
    ("unknown-ack", lambda t: {"ack_message_id": "never-sent"}, Code.NOT_FOUND),
]


@pytest.mark.parametrize(
    ("fields", "code"), [(f, c) for _, f, c in BAD_ITEMS], ids=[n for n, _, _ in BAD_ITEMS]
)
async def test_a_bad_item_is_refused_alone(
    hub: HubEndpoints,
    replies: QueueTap,
    fields: Callable[[dict[str, Any]], dict[str, Any]],
    code: Code,
) -> None:
    async with working_agent(hub, "echo-4") as (agent, messages):
        text = await delivered(hub, messages, "echo-4")
        outputs = OutputCall(agent)
        bad = reg_pb.AgentOutput(ref=1000, **fields(text))
        good = outputs.item(reply_to(text), ack=text["message_id"])
        await outputs.send(bad, good)
        refused = await outputs.result(bad.ref)
        assert refused.code == code.value[0]
        assert refused.detail
        assert not refused.accepted
        # Nothing of the bad item happened; the good one beside it did.
        result = await outputs.result(good.ref)
        assert (result.code, result.accepted, result.acknowledged) == (0, True, True)
        assert (await replies.next())["message_id"] == result.message_id
        assert replies.pending() == []


async def test_an_ack_that_fails_after_its_reply_was_published_says_so(
    hub: HubEndpoints, replies: QueueTap
) -> None:
    async with working_agent(hub, "echo-5") as (agent, messages):
        text = await delivered(hub, messages, "echo-5")
        outputs = OutputCall(agent)
        result = await outputs.one(outputs.item(reply_to(text), ack="someone-else"))
        assert result.code == Code.NOT_FOUND.value[0]
        assert (result.accepted, result.acknowledged) == (True, False)
        assert (await replies.next())["message_id"] == result.message_id
        assert awaiting_ack(hub, "echo-5", text["message_id"])


async def test_a_request_over_the_size_limit_ends_only_its_stream(hub: HubEndpoints) -> None:
    async with (
        working_agent(hub, "big") as (agent, _),
        working_agent(hub, "small") as (
            other,
            other_messages,
        ),
    ):
        outputs = OutputCall(agent)
        text = text_for("big")
        # Over the transport's limit (well above MAX_BYTES, which is checked per envelope).
        too_large = "x" * (4 * MAX_BYTES + REQUEST_BYTES_ACCEPTED)
        await outputs.send(outputs.item(reply_to(text, text_payload=too_large)))
        assert await outputs.ended_with() == Code.RESOURCE_EXHAUSTED
        text = await delivered(hub, other_messages, "small")
        theirs = OutputCall(other)
        assert (await theirs.one(theirs.item(ack=text["message_id"]))).code == 0


async def test_items_for_an_unknown_agent_are_not_found_and_the_stream_goes_on(
    hub: HubEndpoints,
) -> None:
    async with GrpcAgent(hub.grpc_target, "ghost") as ghost:
        outputs = OutputCall(ghost)
        result = await outputs.one(outputs.item(ack="m1"))
        assert result.code == Code.NOT_FOUND.value[0]
        await ghost.register()
        result = await outputs.one(outputs.item(ack="m1"))
        # Registered now, with no ReceiveMessages stream open.
        assert result.code == Code.FAILED_PRECONDITION.value[0]


async def test_another_session_may_not_speak_for_a_live_agent(hub: HubEndpoints) -> None:
    async with working_agent(hub, "owned") as (_owner, messages):
        text = await delivered(hub, messages, "owned")
        async with GrpcAgent(hub.grpc_target, "owned", session="intruder") as intruder:
            outputs = OutputCall(intruder)
            result = await outputs.one(outputs.item(reply_to(text), ack=text["message_id"]))
            assert result.code == Code.PERMISSION_DENIED.value[0]
            assert not result.accepted
        assert awaiting_ack(hub, "owned", text["message_id"])


async def test_a_stream_speaks_for_one_agent(hub: HubEndpoints) -> None:
    async with (
        working_agent(hub, "first") as (agent, _),
        working_agent(hub, "bystander") as (
            other,
            other_messages,
        ),
    ):
        outputs = OutputCall(agent)
        await outputs.send(outputs.item(ack="x"))
        await outputs.result(1)
        await outputs.send(outputs.item(ack="y"), agent_id="bystander")
        assert await outputs.ended_with() == Code.INVALID_ARGUMENT
        # The other agent's streams carry on.
        text = await delivered(hub, other_messages, "bystander")
        theirs = OutputCall(other)
        result = await theirs.one(theirs.item(ack=text["message_id"]))
        assert result.code == 0


@pytest.mark.parametrize("agent_id", ["", "not an id!"])
async def test_a_stream_without_a_valid_agent_id_ends(hub: HubEndpoints, agent_id: str) -> None:
    async with GrpcAgent(hub.grpc_target, "x") as agent:
        outputs = OutputCall(agent)
        await outputs.send(outputs.item(ack="m"), agent_id=agent_id)
        assert await outputs.ended_with() == Code.INVALID_ARGUMENT


# -- the stream under random bytes -----------------------------------------------------------------


def stream_payloads(seed: int) -> list[list[bytes]]:
    """Streams of requests: random bytes, and valid requests flipped, cut or extended."""
    rng = random.Random(seed)
    valid = reg_pb.AgentOutputs(
        agent_id="fuzz",
        items=[
            reg_pb.AgentOutput(ref=1, envelope_json='{"message_type":"REPLY"}', ack_message_id="m")
        ],
    ).SerializeToString()
    streams: list[list[bytes]] = [[b""], [b"\x00"], [b"\xff" * 16], [valid, b"\xff" * 8]]
    while len(streams) < 40:
        stream = []
        for _ in range(rng.randrange(1, 4)):
            stream.append(mutated(rng, valid, random_size=120))
        streams.append(stream)
    return streams


async def _stream_status(channel: grpc.aio.Channel, requests: list[bytes]) -> Code | None:
    """The status the server ends a stream of `requests` with; None when the server ended the
    call while this client was still writing, which grpc reports as the client's own INTERNAL
    ("Internal error from Core", a failed SendMessageOperation) in place of the server's."""
    call = channel.stream_stream("/agent_registration.AgentRegistrationService/SendOutputs")(
        iter(requests), timeout=DEFAULT_TIMEOUT
    )
    try:
        async with asyncio.timeout(DEFAULT_TIMEOUT):
            async for _ in call:
                pass
    except grpc.aio.AioRpcError as error:
        if error.code() is Code.INTERNAL and "SendMessageOperation" in (
            error.debug_error_string() or ""
        ):
            return None
        return error.code()
    return Code.OK


async def test_random_request_streams_get_results_or_a_status(hub: HubEndpoints) -> None:
    async with grpc.aio.insecure_channel(hub.grpc_target) as channel:
        for requests in stream_payloads(seed=6):
            code = await _stream_status(channel, requests)
            # Bad input is named as such, never an unexplained UNKNOWN or INTERNAL.
            assert code not in (Code.UNKNOWN, Code.INTERNAL), requests
        async with working_agent(hub, "after-fuzz") as (agent, messages):
            text = await delivered(hub, messages, "after-fuzz")
            outputs = OutputCall(agent)
            result = await outputs.one(outputs.item(reply_to(text), ack=text["message_id"]))
            assert result.code == 0


# -- authorization ---------------------------------------------------------------------------------


@pytest.fixture
async def secured_hub() -> AsyncIterator[HubEndpoints]:
    async with running_hub(test_settings(auth_secret=SECRET)) as endpoints:
        yield endpoints


def bearer(role: Role, sub: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {Authenticator(SECRET).mint(role, sub, 300)}"),)


async def test_without_a_token_the_stream_is_unauthenticated(secured_hub: HubEndpoints) -> None:
    async with GrpcAgent(secured_hub.grpc_target, "a") as agent:
        # Refused before anything is read: no request is needed (a write could race the end).
        outputs = OutputCall(agent)
        assert await outputs.ended_with() == Code.UNAUTHENTICATED


async def test_a_frontend_token_may_not_open_the_stream(secured_hub: HubEndpoints) -> None:
    async with GrpcAgent(secured_hub.grpc_target, "a") as agent:
        outputs = OutputCall(agent, bearer(Role.FRONTEND, "a"))
        assert await outputs.ended_with() == Code.PERMISSION_DENIED


async def test_an_agent_token_speaks_only_for_its_agent(secured_hub: HubEndpoints) -> None:
    async with GrpcAgent(secured_hub.grpc_target, "b") as agent:
        outputs = OutputCall(agent, bearer(Role.AGENT, "a"))
        await outputs.send(outputs.item(ack="m"))
        assert await outputs.ended_with() == Code.PERMISSION_DENIED
    async with GrpcAgent(secured_hub.grpc_target, "a") as agent:
        agent.metadata += bearer(Role.AGENT, "a")
        await agent.register()
        outputs = OutputCall(agent)
        result = await outputs.one(outputs.item(ack="m"))
        # Authorized: refused only because no ReceiveMessages stream is open.
        assert result.code == Code.FAILED_PRECONDITION.value[0]


# -- the SDK's client: the stream where offered, the unary calls where not -------------------------


class _Recorder(grpc.aio.ServerInterceptor):
    def __init__(self) -> None:
        self.methods: list[str] = []

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        self.methods.append(handler_call_details.method.rsplit("/", 1)[-1])
        return await continuation(handler_call_details)


class _OlderServicer(AgentRegistrationServicer):
    """The hub as it was before SendOutputs and ReceiveMessageBatches."""

    async def SendOutputs(self, request_iterator: Any, context: Any) -> Any:  # type: ignore[override]
        await context.abort(Code.UNIMPLEMENTED, "Method not implemented!")
        yield  # pragma: no cover

    async def ReceiveMessageBatches(self, request: Any, context: Any) -> Any:  # type: ignore[override]
        await context.abort(Code.UNIMPLEMENTED, "Method not implemented!")
        yield  # pragma: no cover


@asynccontextmanager
async def second_port(hub: HubEndpoints, *, older: bool) -> AsyncIterator[tuple[str, _Recorder]]:
    """Another gRPC port on the same hub, recording the methods called on it."""
    recorder = _Recorder()
    server = grpc.aio.server(interceptors=[recorder, RejectMalformedRequests()])
    servicer = (_OlderServicer if older else AgentRegistrationServicer)(hub.hub.grpc_parts())
    reg_grpc.add_AgentRegistrationServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", recorder
    finally:
        await server.stop(None)


@pytest.mark.parametrize("older", [False, True], ids=["streams", "older-server"])
async def test_the_sdk_client_answers_and_acks_either_way(
    hub: HubEndpoints, replies: QueueTap, older: bool
) -> None:
    async with second_port(hub, older=older) as (target, recorder):
        client = GrpcHubClient(target, "session-1", max_message_bytes=MAX_BYTES)
        try:
            registration = await client.register(RegistrationRequest("sdk-agent", "sdk", "1"))
            stream = client.messages(registration.agent_id, 8)
            incoming: list[IncomingMessage] = []
            all_in = asyncio.Event()

            async def read() -> None:
                async for item in stream:
                    incoming.append(item)
                    if len(incoming) == 3:
                        all_in.set()

            reader = asyncio.create_task(read())
            texts = []
            try:
                for _ in range(3):
                    text = text_for("sdk-agent")
                    await publish_json(hub.bus, agent_queue("sdk-agent"), text)
                    texts.append(text)
                async with asyncio.timeout(DEFAULT_TIMEOUT):
                    await all_in.wait()
                first, second, third = texts
                reply = Envelope.model_validate_json(reply_to(first))
                assert await client.send_message("sdk-agent", reply, ack=first["message_id"])
                chunk = Envelope(
                    message_type=MessageType.REPLY_CHUNK,
                    receiver_id=second["sender_id"],
                    in_reply_to_message_id=second["message_id"],
                    text_delta="ec",
                    seq=0,
                )
                assert not await client.send_message("sdk-agent", chunk)
                await client.ack("sdk-agent", second["message_id"], True)
                # Larger than half the limit: on its own SendMessage call, ack after it.
                large = Envelope.model_validate_json(
                    reply_to(third, text_payload="x" * (MAX_BYTES // 2))
                )
                assert await client.send_message("sdk-agent", large, ack=third["message_id"])
                published = [await replies.next() for _ in range(3)]
                assert [m["message_type"] for m in published] == ["REPLY", "REPLY_CHUNK", "REPLY"]
                for text in texts:
                    assert not awaiting_ack(hub, "sdk-agent", text["message_id"])
            finally:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
                await stream.aclose()
        finally:
            await client.close()
    assert ("AckMessage" in recorder.methods) is older
    assert "SendMessage" in recorder.methods  # the large one, either way
    if older:
        assert "ReceiveMessages" in recorder.methods
    else:
        assert "SendOutputs" in recorder.methods
        assert "ReceiveMessageBatches" in recorder.methods
        assert "ReceiveMessages" not in recorder.methods
