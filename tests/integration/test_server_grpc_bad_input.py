"""Bad input on every gRPC method: each call fails with its documented status code, and a
healthy agent and a status subscriber connected at the same time keep their traffic."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest
import pytest_asyncio

from agentcomm.generated import agent_registration_service_pb2 as reg_pb
from agentcomm.generated import agent_status_service_pb2 as status_pb
from agentcomm.generated import broker_registration_service_pb2 as broker_pb
from agentcomm.grpc_channel import REQUEST_BYTES_ACCEPTED
from agentcomm.server.testing import HubEndpoints, running_hub, test_settings
from tests.support.agent import GrpcAgent, GrpcBroker, StreamReader
from tests.support.waiting import DEFAULT_TIMEOUT, wait_until

Code = grpc.StatusCode
MAX_BYTES = 4096
_probes = itertools.count()
_scenes = itertools.count()


@dataclass
class Scene:
    hub: HubEndpoints
    healthy: GrpcAgent
    owner: GrpcAgent
    intruder: GrpcAgent
    anonymous: GrpcAgent
    broker: GrpcBroker
    status: StreamReader[status_pb.AgentStatusResponse]
    http: httpx.AsyncClient
    stack: AsyncExitStack

    def resolve(self, agent_id: str) -> str:
        """The cases name "healthy" and "owned"; each test has its own agents of that role."""
        return {"healthy": self.healthy.agent_id, "owned": self.owner.agent_id}.get(
            agent_id, agent_id
        )

    async def assert_healthy_unaffected(self) -> None:
        response = await self.healthy.heartbeat("IDLE")
        assert response.success is True
        result = await self.http.post(
            f"/api/agents/{self.healthy.agent_id}/commands",
            json={"type": "ping", "content": "still-there"},
        )
        assert result.status_code == 200, result.text
        assert result.json()["output"] == "pong:still-there"
        assert self.hub.hub.registry.is_online(self.healthy.agent_id)
        # The status stream is alive, and the failed call changed nobody's presence: the next
        # delta on it is the one of a probe agent registered now.
        probe = await self.stack.enter_async_context(
            GrpcAgent(self.hub.grpc_target, f"probe-{next(_probes)}")
        )
        await probe.register()
        delta = await self.status.next()
        assert delta.is_full_update is False
        assert [info.agent_id for info in delta.agents] == [probe.agent_id]
        assert not self.status.ended.is_set()


# One hub for the module (each test brings its own agents, broker and ids): starting a hub per
# case would spend most of the suite's time on starting and stopping servers. Timeouts are long
# so that agents of earlier tests never change presence during a later one.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def shared_hub() -> AsyncIterator[HubEndpoints]:
    settings = test_settings(max_message_bytes=MAX_BYTES, agent_timeout=3600, stream_grace=3600)
    async with running_hub(settings) as hub:
        yield hub


@pytest_asyncio.fixture(loop_scope="module")
async def scene(shared_hub: HubEndpoints) -> AsyncIterator[Scene]:
    hub, n = shared_hub, next(_scenes)
    target = hub.grpc_target
    async with AsyncExitStack() as stack:
        healthy = await stack.enter_async_context(GrpcAgent(target, f"healthy-{n}", session="h"))
        await healthy.register("Healthy")

        async def answer_ping(command: reg_pb.Command) -> reg_pb.CommandResult:
            return reg_pb.CommandResult(
                command_id=command.command_id,
                agent_id=healthy.agent_id,
                success=True,
                output=f"pong:{command.content}",
            )

        healthy.answer_commands(answer_ping)
        owned = f"owned-{n}"
        owner = await stack.enter_async_context(GrpcAgent(target, owned, session="owner"))
        await owner.register("Owned")
        intruder = await stack.enter_async_context(GrpcAgent(target, owned, session="intruder"))
        anonymous = await stack.enter_async_context(GrpcAgent(target, owned))
        record = hub.hub.registry.get(healthy.agent_id)
        assert record is not None
        await wait_until(lambda: record.open_streams == 1, what="the healthy command stream")
        broker = await stack.enter_async_context(GrpcBroker(target, f"broker_watch_{n}"))
        status = broker.subscribe()
        assert (await status.next()).is_full_update is True
        http = await stack.enter_async_context(httpx.AsyncClient(base_url=hub.http_url, timeout=5))
        yield Scene(hub, healthy, owner, intruder, anonymous, broker, status, http, stack)


async def _finish(call: Awaitable[Any] | Any) -> None:
    async with asyncio.timeout(DEFAULT_TIMEOUT):
        if hasattr(call, "__aiter__"):
            async for _ in call:
                pass
        else:
            await call


async def expect_status(call: Awaitable[Any] | Any, code: grpc.StatusCode) -> str:
    """Awaits a unary call, or reads a server stream, and returns the details of its failure."""
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await _finish(call)
    error = failure.value
    assert error.code() == code, (error.code(), error.details())
    details = error.details() or ""
    assert details, "a failed call must say what was wrong"
    return details


Case = Callable[[Scene], Any]

LONG = "x" * 129
MANY = {f"k{i}": "v" for i in range(65)}


def nested(depth: int) -> dict[str, Any]:
    """Metadata `depth` levels deep, in few bytes: an object around nested lists."""
    value: list[Any] = [1]
    for _ in range(depth - 2):
        value = [value]
    return {"a": value}


def register(agent_id: str, **fields: Any) -> Case:
    def call(scene: Scene) -> Any:
        return scene.healthy.stub.RegisterAgent(
            reg_pb.AgentRegistrationRequest(agent_id=agent_id, **fields)
        )

    return call


def unregister(agent_id: str) -> Case:
    def call(scene: Scene) -> Any:
        return scene.healthy.stub.UnregisterAgent(
            reg_pb.AgentUnregistrationRequest(agent_id=scene.resolve(agent_id))
        )

    return call


def heartbeat(agent_id: str, **fields: Any) -> Case:
    def call(scene: Scene) -> Any:
        return scene.healthy.stub.SendHeartbeat(
            reg_pb.HeartbeatRequest(agent_id=scene.resolve(agent_id), **fields)
        )

    return call


def receive_commands(agent_id: str) -> Case:
    def call(scene: Scene) -> Any:
        return scene.healthy.stub.ReceiveCommands(
            reg_pb.CommandStreamRequest(agent_id=scene.resolve(agent_id))
        )

    return call


def command_result(command_id: str, agent_id: str) -> Case:
    def call(scene: Scene) -> Any:
        return scene.healthy.stub.SendCommandResult(
            reg_pb.CommandResult(
                command_id=command_id, agent_id=scene.resolve(agent_id), success=True
            ),
            metadata=scene.healthy.metadata,
        )

    return call


def receive_messages(agent_id: str, prefetch: int = 0) -> Case:
    def call(scene: Scene) -> Any:
        return scene.healthy.stub.ReceiveMessages(
            reg_pb.MessageStreamRequest(agent_id=scene.resolve(agent_id), prefetch=prefetch),
            metadata=scene.healthy.metadata,
        )

    return call


def ack(agent_id: str, message_id: str) -> Case:
    def call(scene: Scene) -> Any:
        return scene.healthy.stub.AckMessage(
            reg_pb.MessageAck(
                agent_id=scene.resolve(agent_id), message_id=message_id, handled=True
            ),
            metadata=scene.healthy.metadata,
        )

    return call


def send_message(agent_id: str, envelope_json: str) -> Case:
    def call(scene: Scene) -> Any:
        return scene.healthy.stub.SendMessage(
            reg_pb.ChatMessage(agent_id=scene.resolve(agent_id), envelope_json=envelope_json),
            metadata=scene.healthy.metadata,
        )

    return call


def register_broker(broker_id: str, broker_name: str = "b") -> Case:
    def call(scene: Scene) -> Any:
        return scene.broker.registration.RegisterBroker(
            broker_pb.BrokerRegistrationRequest(broker_id=broker_id, broker_name=broker_name)
        )

    return call


def subscribe(broker_id: str) -> Case:
    def call(scene: Scene) -> Any:
        return scene.broker.status.SubscribeToAgentStatus(
            status_pb.AgentStatusRequest(broker_id=broker_id)
        )

    return call


def get_status(broker_id: str) -> Case:
    def call(scene: Scene) -> Any:
        return scene.broker.status.GetAgentStatus(status_pb.AgentStatusRequest(broker_id=broker_id))

    return call


def reply(**fields: Any) -> str:
    return json.dumps({"message_type": "REPLY", "text_payload": "hi", "receiver_id": "x", **fields})


CASES: list[tuple[str, Case, grpc.StatusCode]] = [
    # RegisterAgent
    ("register-id-with-space", register("bad id"), Code.INVALID_ARGUMENT),
    ("register-id-too-long", register(LONG), Code.INVALID_ARGUMENT),
    ("register-id-non-ascii", register("agënt"), Code.INVALID_ARGUMENT),
    ("register-name-too-long", register("a1", agent_name="n" * 257), Code.INVALID_ARGUMENT),
    ("register-too-many-capabilities", register("a1", capabilities=MANY), Code.INVALID_ARGUMENT),
    (
        "register-capability-too-long",
        register("a1", capabilities={"k": "v" * 1025}),
        Code.INVALID_ARGUMENT,
    ),
    (
        "register-capability-empty-key",
        register("a1", capabilities={"": "v"}),
        Code.INVALID_ARGUMENT,
    ),
    # Ids that routing reads as "no receiver" or as a frontend: such an agent would be listed
    # online yet never reachable.
    ("register-id-server", register("server"), Code.INVALID_ARGUMENT),
    ("register-id-server-any-case", register("Server"), Code.INVALID_ARGUMENT),
    ("register-id-frontend-prefix", register("web_" + "a" * 32), Code.INVALID_ARGUMENT),
    # UnregisterAgent
    ("unregister-empty-id", unregister(""), Code.INVALID_ARGUMENT),
    ("unregister-invalid-id", unregister("bad id"), Code.INVALID_ARGUMENT),
    ("unregister-unknown", unregister("nobody"), Code.NOT_FOUND),
    # SendHeartbeat
    ("heartbeat-empty-id", heartbeat(""), Code.INVALID_ARGUMENT),
    ("heartbeat-invalid-id", heartbeat(LONG), Code.INVALID_ARGUMENT),
    ("heartbeat-unknown", heartbeat("nobody"), Code.NOT_FOUND),
    ("heartbeat-bad-status", heartbeat("healthy", status="SLEEPY"), Code.INVALID_ARGUMENT),
    ("heartbeat-too-many-metrics", heartbeat("healthy", metrics=MANY), Code.INVALID_ARGUMENT),
    (
        "heartbeat-metric-too-long",
        heartbeat("healthy", metrics={"m": "1" * 1025}),
        Code.INVALID_ARGUMENT,
    ),
    # ReceiveCommands
    ("commands-empty-id", receive_commands(""), Code.INVALID_ARGUMENT),
    ("commands-invalid-id", receive_commands("bad/id"), Code.INVALID_ARGUMENT),
    ("commands-unknown", receive_commands("nobody"), Code.NOT_FOUND),
    # SendCommandResult
    ("result-empty-command-id", command_result("", "healthy"), Code.INVALID_ARGUMENT),
    ("result-invalid-agent-id", command_result("c1", "bad id"), Code.INVALID_ARGUMENT),
    ("result-empty-agent-id", command_result("c1", ""), Code.INVALID_ARGUMENT),
    ("result-unknown-command", command_result("no-such-command", "healthy"), Code.NOT_FOUND),
    # ReceiveMessages
    ("messages-empty-id", receive_messages(""), Code.INVALID_ARGUMENT),
    ("messages-unknown", receive_messages("nobody"), Code.NOT_FOUND),
    ("messages-negative-prefetch", receive_messages("healthy", -1), Code.INVALID_ARGUMENT),
    ("messages-huge-prefetch", receive_messages("healthy", 1_000_000), Code.INVALID_ARGUMENT),
    # AckMessage
    ("ack-empty-agent-id", ack("", "m1"), Code.INVALID_ARGUMENT),
    ("ack-empty-message-id", ack("healthy", ""), Code.INVALID_ARGUMENT),
    ("ack-without-stream", ack("healthy", "m1"), Code.FAILED_PRECONDITION),
    # SendMessage
    ("send-empty-agent-id", send_message("", reply()), Code.INVALID_ARGUMENT),
    ("send-unknown-agent", send_message("nobody", reply()), Code.NOT_FOUND),
    ("send-bad-json", send_message("healthy", '{"message_type": "REPLY",'), Code.INVALID_ARGUMENT),
    ("send-empty-json", send_message("healthy", ""), Code.INVALID_ARGUMENT),
    ("send-json-array", send_message("healthy", "[]"), Code.INVALID_ARGUMENT),
    ("send-no-type", send_message("healthy", '{"text_payload": "x"}'), Code.INVALID_ARGUMENT),
    (
        "send-unknown-type",
        send_message("healthy", reply(message_type="NOPE")),
        Code.INVALID_ARGUMENT,
    ),
    # An agent may ask another agent with a TEXT (and CANCEL it), but not an empty one.
    (
        "send-empty-text",
        send_message("healthy", reply(message_type="TEXT", text_payload=" ")),
        Code.INVALID_ARGUMENT,
    ),
    (
        "send-text-to-a-frontend",
        send_message("healthy", reply(message_type="TEXT", receiver_id="web_" + "0" * 32)),
        Code.INVALID_ARGUMENT,
    ),
    (
        "send-cancel-type",
        send_message("healthy", reply(message_type="CANCEL")),
        Code.INVALID_ARGUMENT,
    ),
    (
        "send-bad-message-id",
        send_message("healthy", reply(message_id="a b")),
        Code.INVALID_ARGUMENT,
    ),
    ("send-negative-seq", send_message("healthy", reply(seq=-1)), Code.INVALID_ARGUMENT),
    # Too deep for the encoders of later hops: refused here, never UNKNOWN naming a class.
    (
        "send-metadata-too-deep",
        send_message("healthy", reply(metadata=nested(300))),
        Code.INVALID_ARGUMENT,
    ),
    (
        "send-oversize",
        send_message("healthy", reply(text_payload="x" * (MAX_BYTES + 1))),
        Code.INVALID_ARGUMENT,
    ),
    (
        "send-over-the-transport-limit",
        send_message("healthy", reply(text_payload="x" * (5 * MAX_BYTES + REQUEST_BYTES_ACCEPTED))),
        Code.RESOURCE_EXHAUSTED,
    ),
    # RegisterBroker
    ("broker-empty-id", register_broker(""), Code.INVALID_ARGUMENT),
    ("broker-invalid-id", register_broker("bad id"), Code.INVALID_ARGUMENT),
    ("broker-name-too-long", register_broker("broker_x", "n" * 257), Code.INVALID_ARGUMENT),
    # AgentStatusService: an empty broker_id is allowed (the seed's brokers may send none),
    # a malformed one is refused.
    ("subscribe-invalid-broker-id", subscribe("bad id"), Code.INVALID_ARGUMENT),
    ("get-status-invalid-broker-id", get_status(LONG), Code.INVALID_ARGUMENT),
]


@pytest.mark.parametrize(
    ("case", "code"), [pytest.param(case, code, id=name) for name, case, code in CASES]
)
async def test_bad_call(scene: Scene, case: Case, code: grpc.StatusCode) -> None:
    await expect_status(case(scene), code)
    await scene.assert_healthy_unaffected()


# -- another session and the agent's id ---------------------------------------------------------


async def test_live_id_of_another_session_is_already_exists(scene: Scene) -> None:
    await expect_status(scene.intruder.register("Intruder"), Code.ALREADY_EXISTS)
    record = scene.hub.hub.registry.get(scene.owner.agent_id)
    assert record is not None
    assert record.agent_name == "Owned"
    await scene.assert_healthy_unaffected()


async def test_live_id_from_another_channel_without_session_is_already_exists(
    scene: Scene,
) -> None:
    await expect_status(scene.anonymous.register("Anonymous"), Code.ALREADY_EXISTS)
    await scene.assert_healthy_unaffected()


async def test_agent_without_session_is_known_by_its_connection(scene: Scene) -> None:
    target = scene.hub.grpc_target
    first = await scene.stack.enter_async_context(GrpcAgent(target, "plain"))
    await first.register("Plain")
    assert [info.agent_id for info in (await scene.status.next()).agents] == ["plain"]
    # The same connection may register again (e.g. to update its capabilities) ...
    again = await first.register("Plain", capabilities={"v": "2"})
    assert again.success is True
    delta = await scene.status.next()
    assert [(i.agent_id, dict(i.capabilities)) for i in delta.agents] == [("plain", {"v": "2"})]
    # ... another connection may not take the id while it is live.
    second = await scene.stack.enter_async_context(GrpcAgent(target, "plain"))
    await expect_status(second.register("Plain"), Code.ALREADY_EXISTS)
    await scene.assert_healthy_unaffected()


async def test_offline_id_may_be_taken_by_another_session(scene: Scene) -> None:
    await scene.owner.unregister()
    assert (await scene.status.next()).agents[0].is_online is False
    response = await scene.intruder.register("New owner")
    assert response.success is True
    assert (await scene.status.next()).agents[0].agent_name == "New owner"
    await scene.assert_healthy_unaffected()


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda a: a.unregister(), id="unregister"),
        pytest.param(lambda a: a.heartbeat(), id="heartbeat"),
        pytest.param(lambda a: a.open_commands().call, id="commands"),
        pytest.param(lambda a: a.open_messages().call, id="messages"),
        pytest.param(lambda a: a.send_message(reply()), id="send-message"),
        pytest.param(lambda a: a.ack("m-1"), id="ack"),
    ],
)
@pytest.mark.parametrize("who", ["intruder", "anonymous"])
async def test_other_session_may_not_act_for_a_live_agent(
    scene: Scene, call: Callable[[GrpcAgent], Any], who: str
) -> None:
    """Another session may not, and on an open hub neither may a caller that names no
    session from another connection (it used to get the agent's work: issue 21)."""
    caller = scene.intruder if who == "intruder" else scene.anonymous
    pending = call(caller)
    if isinstance(pending, grpc.aio.UnaryStreamCall):
        reader = caller.commands or caller.messages
        assert reader is not None
        error = await reader.wait_ended()
        assert error is not None
        assert error.code() == Code.PERMISSION_DENIED
    else:
        await expect_status(pending, Code.PERMISSION_DENIED)
    assert scene.hub.hub.registry.is_online(scene.owner.agent_id)
    await scene.assert_healthy_unaffected()


# -- acknowledgements ------------------------------------------------------------------------------


async def test_ack_of_unknown_message_with_open_stream_is_not_found(scene: Scene) -> None:
    scene.healthy.open_messages()
    await wait_until(
        lambda: scene.hub.hub.inboxes.get(scene.healthy.agent_id) is not None, what="the inbox"
    )
    await expect_status(scene.healthy.ack("never-sent"), Code.NOT_FOUND)
    await scene.assert_healthy_unaffected()


async def test_result_from_the_wrong_agent_is_not_found(scene: Scene) -> None:
    """A command result only counts from the agent the command was sent to."""
    stolen: asyncio.Queue[str] = asyncio.Queue()

    async def forward(command: reg_pb.Command) -> None:
        stolen.put_nowait(command.command_id)

    victim = await scene.stack.enter_async_context(
        GrpcAgent(scene.hub.grpc_target, "victim", session="v")
    )
    await victim.register()
    assert [info.agent_id for info in (await scene.status.next()).agents] == ["victim"]
    victim.answer_commands(forward)  # type: ignore[arg-type]
    record = scene.hub.hub.registry.get("victim")
    assert record is not None
    await wait_until(lambda: record.open_streams == 1, what="the victim's command stream")
    request = asyncio.create_task(
        scene.http.post("/api/agents/victim/commands", json={"type": "t", "timeout_s": 5})
    )
    try:
        async with asyncio.timeout(DEFAULT_TIMEOUT):
            command_id = await stolen.get()
        await expect_status(command_result(command_id, "healthy")(scene), Code.NOT_FOUND)
        await victim.stub.SendCommandResult(
            reg_pb.CommandResult(command_id=command_id, agent_id="victim", success=True),
            metadata=victim.metadata,
            timeout=DEFAULT_TIMEOUT,
        )
        async with asyncio.timeout(DEFAULT_TIMEOUT):
            response = await request
        assert response.status_code == 200
        assert response.json()["agent_id"] == "victim"
    finally:
        request.cancel()
    await scene.assert_healthy_unaffected()


# -- what an empty or odd field is not -------------------------------------------------------------


async def test_status_with_empty_broker_id_is_served(scene: Scene) -> None:
    async with asyncio.timeout(DEFAULT_TIMEOUT):
        response = await get_status("")(scene)
    assert response.is_full_update is True
    assert {info.agent_id for info in response.agents} >= {
        scene.healthy.agent_id,
        scene.owner.agent_id,
    }


async def test_heartbeat_status_is_case_insensitive(scene: Scene) -> None:
    response = await scene.healthy.heartbeat("busy")
    assert response.success is True
    delta = await scene.status.next()
    assert [(i.agent_id, i.status) for i in delta.agents] == [(scene.healthy.agent_id, "busy")]
    assert (await scene.healthy.heartbeat("IDLE")).success is True
    delta = await scene.status.next()
    assert [(i.agent_id, i.status) for i in delta.agents] == [(scene.healthy.agent_id, "online")]
