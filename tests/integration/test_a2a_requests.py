"""Bad A2A requests get A2A (JSON-RPC) errors and disturb nothing else; with AUTH_SECRET the
endpoints take a frontend or admin token, and a task belongs to the token's subject."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from a2a.types import GetTaskRequest, TaskState
from a2a.utils.errors import TaskNotFoundError

from agentcomm.core.auth import Authenticator, Role
from agentcomm.sdk.demo_agents import build_demo_agent
from agentcomm.server.testing import test_settings
from tests.support.a2a import A2AStack, a2a_stack, collect, text_message

SECRET = "a-test-secret-that-is-long-enough-for-hs256"
AUTH = Authenticator(SECRET)
V1 = {"A2A-Version": "1.0"}


@pytest.fixture
async def stack() -> AsyncIterator[A2AStack]:
    settings = test_settings(http_body_bytes=64 * 1024, max_message_bytes=32 * 1024)
    async with a2a_stack(settings) as running:
        await running.run(build_demo_agent("echo", running.agent_settings, transport="grpc"))
        yield running


async def rpc(stack: A2AStack, body: Any, agent_id: str = "echo") -> httpx.Response:
    content = body if isinstance(body, bytes) else None
    json_body = None if content is not None else body
    return await stack.http.post(stack.url(agent_id), content=content, json=json_body, headers=V1)


def send(text: str = "hi", method: str = "SendMessage") -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": "r1",
        "method": method,
        "params": {"message": {"messageId": "m1", "role": "ROLE_USER", "parts": [{"text": text}]}},
    }


def error_code(response: httpx.Response) -> int:
    code: int = response.json()["error"]["code"]
    return code


async def still_answers(stack: A2AStack) -> None:
    response = await rpc(stack, send("still there?"))
    result = response.json()["result"]["task"]
    assert result["status"]["state"] == "TASK_STATE_COMPLETED", result
    assert result["artifacts"][0]["parts"][0]["text"] == "echo: still there?"


async def test_malformed_requests_get_json_rpc_errors(stack: A2AStack) -> None:
    assert error_code(await rpc(stack, b"{not json")) == -32700
    assert error_code(await rpc(stack, {"id": 1, "method": "SendMessage"})) == -32600
    assert error_code(await rpc(stack, send(method="NoSuchMethod"))) == -32601
    bad_params = send()
    bad_params["params"] = {"message": {"parts": "not a list"}}
    assert error_code(await rpc(stack, bad_params)) == -32602
    empty = await rpc(stack, send(text="   "))
    assert error_code(empty) == -32602
    await still_answers(stack)


async def test_unknown_agent_and_oversize_bodies(stack: A2AStack) -> None:
    unknown = await rpc(stack, send(), agent_id="nobody")
    assert error_code(unknown) == -32600
    assert "nobody" in unknown.json()["error"]["message"]
    large = await rpc(stack, send("x" * 100_000))
    assert large.status_code == 413
    assert error_code(large) == -32600
    # Within the body limit, over what a message may carry.
    long_text = await rpc(stack, send("x" * 40_000))
    assert error_code(long_text) == -32602
    assert long_text.json()["error"]["data"][0]["metadata"] == {"error_code": "too_large"}
    await still_answers(stack)


@pytest.fixture
async def secured() -> AsyncIterator[A2AStack]:
    settings = test_settings(auth_secret=SECRET, auth_token=AUTH.mint(Role.BROKER, "b", 300))
    async with a2a_stack(settings) as running:
        agent_settings = running.agent_settings.model_copy(
            update={"auth_token": AUTH.mint(Role.AGENT, "echo", 300)}
        )
        await running.run(build_demo_agent("echo", agent_settings, transport="grpc"))
        yield running


async def test_with_auth_secret_a_frontend_token_is_needed(secured: A2AStack) -> None:
    stack = secured
    card_url = stack.url("echo") + "/.well-known/agent-card.json"
    refused = await stack.http.get(card_url)
    assert refused.status_code == 401
    assert error_code(refused) == -32600
    agent_token = AUTH.mint(Role.AGENT, "echo", 300)
    forbidden = await stack.http.post(
        stack.url("echo"), json=send(), headers={**V1, "Authorization": f"Bearer {agent_token}"}
    )
    assert forbidden.status_code == 403

    alice = AUTH.mint(Role.FRONTEND, "alice", 300)
    bob = AUTH.mint(Role.FRONTEND, "bob", 300)
    stack.http.headers["Authorization"] = f"Bearer {alice}"
    card = await stack.card("echo")
    assert "bearer" in card.security_schemes
    assert card.security_schemes["bearer"].http_auth_security_scheme.scheme == "bearer"
    client = await stack.client("echo", streaming=False)
    task = (await collect(client.send_message(text_message("mine")))).pop().task
    assert task.status.state == TaskState.TASK_STATE_COMPLETED
    assert (await client.get_task(GetTaskRequest(id=task.id))).id == task.id

    stack.http.headers["Authorization"] = f"Bearer {bob}"
    with pytest.raises(TaskNotFoundError):
        await client.get_task(GetTaskRequest(id=task.id))
