"""Fuzzing the A2A endpoint: bodies made from valid requests of both spec versions (bytes
flipped, cut short, extended, or values swapped for others of any JSON type) each get a
JSON-RPC answer quickly — a result or an error that names the request's fault, never an
internal error or a hang — and the hub answers normally afterwards."""

from __future__ import annotations

import asyncio
import copy
import json
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agentcomm.sdk.demo_agents import build_demo_agent
from agentcomm.server.testing import test_settings
from tests.support.a2a import A2AStack, a2a_stack
from tests.support.fuzzing import mutated

BODIES = 150
CALL_TIMEOUT = 10.0
INTERNAL_ERROR = -32603
V1 = {"A2A-Version": "1.0", "Content-Type": "application/json"}


def _message(v1: bool) -> dict[str, Any]:
    if v1:
        return {"messageId": "m1", "role": "ROLE_USER", "parts": [{"text": "hi"}]}
    return {
        "messageId": "m1",
        "role": "user",
        "kind": "message",
        "parts": [{"kind": "text", "text": "hi"}],
    }


VALID: list[tuple[bool, dict[str, Any]]] = [
    (
        True,
        {"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {"message": _message(True)}},
    ),
    (
        True,
        {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "GetTask",
            "params": {"id": "t1", "historyLength": 2},
        },
    ),
    (True, {"jsonrpc": "2.0", "id": 3, "method": "CancelTask", "params": {"id": "t1"}}),
    (
        False,
        {
            "jsonrpc": "2.0",
            "id": 4,
            "method": "message/send",
            "params": {"message": _message(False)},
        },
    ),
    (False, {"jsonrpc": "2.0", "id": 5, "method": "tasks/get", "params": {"id": "t1"}}),
]
ANY_JSON: list[Any] = [None, True, 0, -1, 2**70, 1.5, "", "x" * 300, [], [1, "a"], {}, {"a": None}]


def _swap_a_value(rng: random.Random, value: Any) -> Any:
    """`value` with one value somewhere inside it replaced by a JSON value of any type."""
    if isinstance(value, dict) and value and rng.random() < 0.8:
        key = rng.choice(list(value))
        value[key] = _swap_a_value(rng, value[key])
        return value
    if isinstance(value, list) and value and rng.random() < 0.8:
        index = rng.randrange(len(value))
        value[index] = _swap_a_value(rng, value[index])
        return value
    return copy.deepcopy(rng.choice(ANY_JSON))


def bodies(seed: int) -> list[tuple[bool, bytes]]:
    rng = random.Random(seed)
    out: list[tuple[bool, bytes]] = [(True, b""), (True, b"[]"), (True, b"null"), (False, b"{}")]
    while len(out) < BODIES:
        v1, valid = rng.choice(VALID)
        if rng.random() < 0.5:
            body = json.dumps(_swap_a_value(rng, copy.deepcopy(valid))).encode()
        else:
            body = mutated(rng, json.dumps(valid).encode(), random_size=200)
        out.append((v1, body))
    return out


@pytest.fixture
async def stack() -> AsyncIterator[A2AStack]:
    async with a2a_stack(test_settings()) as running:
        await running.run(build_demo_agent("echo", running.agent_settings, transport="grpc"))
        yield running


@pytest.mark.parametrize("seed", [17, 23, 31])
async def test_random_bodies_get_json_rpc_answers_and_leave_the_hub_healthy(
    stack: A2AStack, seed: int
) -> None:
    for v1, body in bodies(seed):
        headers = V1 if v1 else {"Content-Type": "application/json"}
        async with asyncio.timeout(CALL_TIMEOUT):
            response = await stack.http.post(stack.url("echo"), content=body, headers=headers)
        assert response.status_code == 200, (body, response.text)
        answer = response.json()
        assert answer.get("jsonrpc") == "2.0", (body, answer)
        if "error" in answer:
            assert answer["error"]["code"] != INTERNAL_ERROR, (body, answer)
        else:
            assert "result" in answer, (body, answer)
    good = {
        "jsonrpc": "2.0",
        "id": 9,
        "method": "SendMessage",
        "params": {"message": _message(True)},
    }
    response = await stack.http.post(stack.url("echo"), json=good, headers=V1)
    task = response.json()["result"]["task"]
    assert task["status"]["state"] == "TASK_STATE_COMPLETED", task
    assert task["artifacts"][0]["parts"][0]["text"] == "echo: hi"
