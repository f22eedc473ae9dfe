"""The HTTP API: health, readiness, the agent list and operator commands (PROTOCOL §7)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest

from agentcomm.generated import agent_registration_service_pb2 as reg_pb
from agentcomm.server.testing import HubEndpoints, running_hub, test_settings
from tests.support.agent import GrpcAgent
from tests.support.frontend import PRESENCE, Frontend, of_type
from tests.support.waiting import DEFAULT_TIMEOUT, wait_until


@dataclass
class Scene:
    hub: HubEndpoints
    http: httpx.AsyncClient
    stack: AsyncExitStack

    async def agent(self, agent_id: str, *, stream: bool = True) -> GrpcAgent:
        agent = await self.stack.enter_async_context(
            GrpcAgent(self.hub.grpc_target, agent_id, session=agent_id)
        )
        await agent.register(agent_id.title())
        if stream:
            agent.open_commands()
            record = self.hub.hub.registry.get(agent_id)
            assert record is not None
            await wait_until(lambda: record.open_streams == 1, what="the command stream")
        return agent


@pytest.fixture
async def scene() -> AsyncIterator[Scene]:
    async with AsyncExitStack() as stack:
        hub = await stack.enter_async_context(running_hub(test_settings()))
        http = await stack.enter_async_context(
            httpx.AsyncClient(base_url=hub.http_url, timeout=DEFAULT_TIMEOUT)
        )
        yield Scene(hub, http, stack)


async def test_health_and_readiness(scene: Scene) -> None:
    health = await scene.http.get("/healthz")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    ready = await scene.http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    metrics = await scene.http.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")


async def test_agent_list(scene: Scene) -> None:
    assert (await scene.http.get("/api/agents")).json() == []
    await scene.agent("lister", stream=False)
    agents = (await scene.http.get("/api/agents")).json()
    assert len(agents) == 1
    info = agents[0]
    assert (info["agent_id"], info["agent_name"], info["is_online"], info["status"]) == (
        "lister",
        "Lister",
        True,
        "online",
    )


async def test_command_round_trip(scene: Scene) -> None:
    agent = await scene.agent("worker")
    request = asyncio.create_task(
        scene.http.post(
            "/api/agents/worker/commands",
            json={
                "type": "shell",
                "content": "echo hi",
                "parameters": {"cwd": "/tmp"},
                "timeout_s": 5,
            },
        )
    )
    try:
        assert agent.commands is not None
        command = await agent.commands.next()
        assert command.type == "shell"
        assert command.content == "echo hi"
        assert dict(command.parameters) == {"cwd": "/tmp"}
        assert command.is_cancellation is False
        assert command.command_id
        result = await agent.stub.SendCommandResult(
            reg_pb.CommandResult(
                command_id=command.command_id,
                agent_id="worker",
                success=False,
                output="partial",
                error_message="exit 3",
                exit_code=3,
                execution_time_ms=42,
            ),
            metadata=agent.metadata,
            timeout=DEFAULT_TIMEOUT,
        )
        assert result.received is True
        async with asyncio.timeout(DEFAULT_TIMEOUT):
            response = await request
    finally:
        request.cancel()
    assert response.status_code == 200, response.text
    assert response.json() == {
        "command_id": command.command_id,
        "agent_id": "worker",
        "success": False,
        "output": "partial",
        "error_message": "exit 3",
        "exit_code": 3,
        "execution_time_ms": 42,
    }
    # A second result for the same command finds no one waiting.
    with pytest.raises(grpc.aio.AioRpcError) as again:
        await agent.stub.SendCommandResult(
            reg_pb.CommandResult(command_id=command.command_id, agent_id="worker", success=True),
            metadata=agent.metadata,
            timeout=DEFAULT_TIMEOUT,
        )
    assert again.value.code() == grpc.StatusCode.NOT_FOUND


async def test_pause_command_changes_what_frontends_see(scene: Scene) -> None:
    agent = await scene.agent("pausable")
    async with await Frontend.registered(scene.hub.ws_url) as frontend:
        request = asyncio.create_task(
            scene.http.post("/api/agents/pausable/commands", json={"type": "pause"})
        )
        try:
            assert agent.commands is not None
            command = await agent.commands.next()
            await agent.stub.SendCommandResult(
                reg_pb.CommandResult(
                    command_id=command.command_id, agent_id="pausable", success=True
                ),
                metadata=agent.metadata,
                timeout=DEFAULT_TIMEOUT,
            )
            async with asyncio.timeout(DEFAULT_TIMEOUT):
                response = await request
        finally:
            request.cancel()
        assert response.status_code == 200
        delta = await frontend.next(of_type(PRESENCE, is_full_update=False))
        assert [(a["agent_id"], a["status"], a["is_online"]) for a in delta["agents"]] == [
            ("pausable", "paused", True)
        ]


async def test_unknown_agent_is_404(scene: Scene) -> None:
    response = await scene.http.post("/api/agents/nobody/commands", json={"type": "ping"})
    assert response.status_code == 404
    assert "nobody" in response.json()["detail"]


async def test_offline_agent_is_409(scene: Scene) -> None:
    agent = await scene.agent("gone", stream=False)
    await agent.unregister()
    response = await scene.http.post("/api/agents/gone/commands", json={"type": "ping"})
    assert response.status_code == 409
    assert "gone" in response.json()["detail"]


async def test_online_agent_without_command_stream_is_409(scene: Scene) -> None:
    await scene.agent("streamless", stream=False)
    response = await scene.http.post("/api/agents/streamless/commands", json={"type": "ping"})
    assert response.status_code == 409
    assert "command stream" in response.json()["detail"]


async def test_agent_that_does_not_answer_is_504(scene: Scene) -> None:
    agent = await scene.agent("silent")
    response = await scene.http.post(
        "/api/agents/silent/commands", json={"type": "ping", "timeout_s": 0.3}
    )
    assert response.status_code == 504
    assert "silent" in response.json()["detail"]
    # The command did reach the agent; its late result is refused, not crashed on.
    assert agent.commands is not None
    command = await agent.commands.next()
    with pytest.raises(grpc.aio.AioRpcError) as late:
        await agent.stub.SendCommandResult(
            reg_pb.CommandResult(command_id=command.command_id, agent_id="silent", success=True),
            metadata=agent.metadata,
            timeout=DEFAULT_TIMEOUT,
        )
    assert late.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({}, id="missing-type"),
        pytest.param({"type": ""}, id="empty-type"),
        pytest.param({"type": "x" * 65}, id="type-too-long"),
        pytest.param({"type": 5}, id="type-not-string"),
        pytest.param({"type": "ping", "timeout_s": 0}, id="zero-timeout"),
        pytest.param({"type": "ping", "timeout_s": -1}, id="negative-timeout"),
        pytest.param({"type": "ping", "timeout_s": 601}, id="timeout-too-long"),
        pytest.param({"type": "ping", "timeout_s": "soon"}, id="timeout-not-number"),
        pytest.param({"type": "ping", "parameters": {"n": 1}}, id="parameter-not-string"),
        pytest.param({"type": "ping", "parameters": ["a"]}, id="parameters-not-object"),
        pytest.param(
            {"type": "ping", "parameters": {f"k{i}": "v" for i in range(65)}},
            id="too-many-parameters",
        ),
        pytest.param([1, 2], id="not-an-object"),
    ],
)
async def test_bad_command_body_is_422(scene: Scene, body: Any) -> None:
    await scene.agent("target")
    response = await scene.http.post("/api/agents/target/commands", json=body)
    assert response.status_code == 422, response.text
    assert scene.hub.hub.registry.is_online("target")


async def test_body_that_is_not_json_is_422(scene: Scene) -> None:
    await scene.agent("target")
    response = await scene.http.post(
        "/api/agents/target/commands",
        content=b"{type: ping",
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 422


async def test_malformed_agent_id_is_422(scene: Scene) -> None:
    response = await scene.http.post("/api/agents/bad%20id/commands", json={"type": "ping"})
    assert response.status_code == 422


async def test_command_larger_than_max_message_bytes_reaches_the_agent() -> None:
    """MAX_MESSAGE_BYTES limits what clients send, not what the server sends them: an operator's
    command (up to 64 KiB of content) must not break the agent's command stream."""
    async with (
        running_hub(test_settings(max_message_bytes=1024)) as hub,
        httpx.AsyncClient(base_url=hub.http_url, timeout=DEFAULT_TIMEOUT) as http,
        GrpcAgent(hub.grpc_target, "big", session="big") as agent,
    ):
        await agent.register()
        content = "y" * 5000

        async def answer(command: reg_pb.Command) -> reg_pb.CommandResult:
            return reg_pb.CommandResult(
                command_id=command.command_id,
                agent_id="big",
                success=True,
                output=str(len(command.content)),
            )

        agent.answer_commands(answer)
        record = hub.hub.registry.get("big")
        assert record is not None
        await wait_until(lambda: record.open_streams == 1, what="the command stream")
        response = await http.post(
            "/api/agents/big/commands", json={"type": "write", "content": content}
        )
        assert response.status_code == 200, response.text
        assert response.json()["output"] == "5000"
        assert hub.hub.registry.is_online("big")
