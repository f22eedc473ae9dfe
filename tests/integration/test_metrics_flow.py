"""What /metrics tells an operator after real chat turns, on both buses: the time to the first
token and to the final answer, bus publish latency, the depth and consumers of the hub's
queues (asked of the bus), agents connected, resumes, slow-client closes — and no label that
names a message, a conversation or a frontend."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest

from agentcomm.config import Settings
from agentcomm.server.testing import test_settings
from tests.integration.test_sdk_agents import WAIT, Stack, chat, echo, stack
from tests.support.frontend import Frontend


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text, or None when it is not there."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    pattern = re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if labels else "") + r" (\S+)"
    found = re.search(rf"^{pattern}$", text, re.MULTILINE)
    return None if found is None else float(found.group(1))


@pytest.fixture(params=["memory", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
async def settings(request: pytest.FixtureRequest) -> AsyncIterator[Settings]:
    if request.param == "rabbitmq":
        yield test_settings(**request.getfixturevalue("rabbitmq_env"))
    else:
        yield test_settings()


async def test_a_chat_turn_shows_in_the_metrics(settings: Settings) -> None:
    async with stack(settings) as running, running.running(echo(running.agent_settings())):
        await two_turns_and_a_resume(running)
        hub = running.hub.hub
        await hub.metrics.read_queue_stats(
            hub.bus, ("broker_input_queue", "server_input_queue", "absent_queue")
        )
        async with httpx.AsyncClient(base_url=running.hub.http_url, timeout=WAIT) as http:
            text = (await http.get("/metrics")).text

    # Two TEXTs answered whole: the first word is the answer.
    assert sample(text, "agentcomm_time_to_first_token_seconds_count") == 2
    assert sample(text, "agentcomm_time_to_final_answer_seconds_count") == 2
    final_sum = sample(text, "agentcomm_time_to_final_answer_seconds_sum")
    assert final_sum is not None
    assert final_sum > 0
    assert final_sum < 2 * WAIT
    published = sample(text, "agentcomm_bus_publish_seconds_count", queue="broker_input_queue")
    assert published is not None
    assert published >= 2
    # The broker consumes broker_input_queue; the hub consumes server_input_queue.
    assert sample(text, "agentcomm_queue_consumers", queue="broker_input_queue") == 1
    assert sample(text, "agentcomm_queue_consumers", queue="server_input_queue") == 1
    assert sample(text, "agentcomm_queue_messages", queue="broker_input_queue") == 0
    assert sample(text, "agentcomm_queue_messages", queue="absent_queue") is None
    assert sample(text, "agentcomm_agents_connected") == 1
    assert sample(text, "agentcomm_resumes_total", outcome="resumed") == 1
    assert sample(text, "agentcomm_resumes_total", outcome="new_session") == 0
    assert sample(text, "agentcomm_slow_client_closes_total") == 0
    # Bounded labels only: no message id in any label.
    for line in text.splitlines():
        if not line.startswith("#"):
            assert "m-1" not in line, line
            assert "m-2" not in line, line


async def two_turns_and_a_resume(running: Stack) -> None:
    async with await Frontend.registered(running.hub.ws_url) as alice:
        first = await chat(alice, "measured", "m-1")
        frontend_id, token = alice.frontend_id, alice.registration["resume_token"]
        await alice.close()
        async with await Frontend.connect(running.hub.ws_url) as again:
            await again.send(
                {
                    "message_type": "REGISTER_FRONTEND",
                    "frontend_name": "tester",
                    "frontend_id": frontend_id,
                    "resume_token": token,
                }
            )
            response = await again.next(timeout=WAIT)
            assert response["frontend_id"] == frontend_id, response
            again.frontend_id = frontend_id
            second = await chat(again, "measured again", "m-2")
    assert (first["message_type"], second["message_type"]) == ("REPLY", "REPLY")
