"""An agent process killed in the middle of a message (every part its own process, RabbitMQ
underneath, agents taking their work over gRPC and straight from the bus):

- back within DELIVERY_TIMEOUT, it gets the message again and the sender one REPLY;
- not back in time, the sender gets ERROR agent_offline (and nothing more when the agent
  returns and answers after all); a TEXT for it while it is offline is refused at once;
- a message that kills it every time (poison) is given up after a bounded number of attempts
  and its sender gets an ERROR, while the agent's other messages are answered.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.processes import Process, restart
from tests.reliability.agents.crashy import POISON_EXIT_CODE
from tests.reliability.stack import Stack, reliability_stack, report_line
from tests.support.frontend import Frontend, of_type

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(180)]

DELIVERY_TIMEOUT = 8.0
AGENT_TIMEOUT = 4.0
# The bus's max_deliveries for agent queues.
MAX_DELIVERIES = 5
TIMEOUT = 30.0
# How long a restarted agent must stay up before it counts as past its crashes.
SETTLED_SECONDS = 1.5
TRANSPORTS = ("grpc", "amqp")


@pytest.fixture
def stack(rabbitmq_available: None, tmp_path: Path, rabbitmq_fast_path: bool) -> Iterator[Stack]:
    flags = {"--delivery-timeout": str(DELIVERY_TIMEOUT), "--agent-timeout": str(AGENT_TIMEOUT)}
    with reliability_stack(tmp_path, server_flags=flags, fast_path=rabbitmq_fast_path) as stack:
        stack.add_broker("broker-killed")
        yield stack


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def one_final(frontend: Frontend, message_id: str, *, timeout: float) -> dict[str, object]:
    """The final answer to `message_id`, checking that no second one follows."""
    final = await frontend.next(
        of_type("REPLY", "ERROR", in_reply_to_message_id=message_id), timeout=timeout
    )
    later = [
        frame
        for frame in await frontend.barrier(timeout=TIMEOUT)
        if frame.get("message_type") in ("REPLY", "ERROR")
        and frame.get("in_reply_to_message_id") == message_id
    ]
    assert later == [], (final, later)
    return final


async def kill_while_working(stack: Stack, agent: Process, frontend: Frontend, text: str) -> str:
    message_id = new_id("slow")
    offset = len(agent.output())
    await frontend.send_text(text, message_id=message_id, receiver_id=agent.name)
    await asyncio.to_thread(agent.wait_for_output, f"working slowly on {message_id}", after=offset)
    agent.kill()
    return message_id


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_agent_back_within_delivery_timeout_gets_the_message_again(
    stack: Stack, transport: str
) -> None:
    agent = await asyncio.to_thread(stack.add_crashy, f"crashy-{transport}", transport)
    async with await Frontend.registered(stack.ws_url, "sender") as frontend:
        message_id = await kill_while_working(stack, agent, frontend, "slow 2")
        killed_at = time.monotonic()
        restart(agent)
        await asyncio.to_thread(stack.server.wait_agents, [agent.name], alive=[agent])
        assert time.monotonic() - killed_at < DELIVERY_TIMEOUT
        final = await one_final(frontend, message_id, timeout=TIMEOUT)
        assert (final["message_type"], final["text_payload"]) == ("REPLY", "echo: slow 2")
        report_line(
            f"agent_killed_back_in_time_{transport}",
            {"final": final["message_type"], "seconds": round(time.monotonic() - killed_at, 1)},
        )


@pytest.mark.slow
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_agent_not_back_in_time_is_answered_agent_offline(
    stack: Stack, transport: str
) -> None:
    agent = await asyncio.to_thread(stack.add_crashy, f"gone-{transport}", transport)
    async with await Frontend.registered(stack.ws_url, "sender") as frontend:
        message_id = await kill_while_working(stack, agent, frontend, "slow 1")
        killed_at = time.monotonic()
        await asyncio.to_thread(stack.server.wait_agents, [agent.name], online=False)
        # While it is offline, a new TEXT for it is refused at once.
        refused_id = new_id("late")
        await frontend.send_text("anyone?", message_id=refused_id, receiver_id=agent.name)
        refused = await frontend.next(
            of_type("ERROR", in_reply_to_message_id=refused_id), timeout=TIMEOUT
        )
        assert refused["error_code"] == "agent_offline"

        final = await frontend.next(
            of_type("REPLY", "ERROR", in_reply_to_message_id=message_id),
            timeout=AGENT_TIMEOUT + DELIVERY_TIMEOUT + TIMEOUT,
        )
        waited = time.monotonic() - killed_at
        assert (final["message_type"], final["error_code"]) == ("ERROR", "agent_offline"), final
        assert waited >= DELIVERY_TIMEOUT

        # Back after all, the agent finds the message in its queue and answers it; the sender
        # already has its answer and gets no second one.
        offset = restart(agent)
        await asyncio.to_thread(
            agent.wait_for_output, f"working slowly on {message_id}", after=offset
        )
        await asyncio.to_thread(stack.server.wait_idle, [agent.name])
        late = [
            frame
            for frame in await frontend.barrier(timeout=TIMEOUT)
            if frame.get("in_reply_to_message_id") == message_id
            and frame.get("message_type") in ("REPLY", "ERROR")
        ]
        assert late == []
        report_line(
            f"agent_killed_not_back_{transport}",
            {"final": final["error_code"], "seconds": round(waited, 1)},
        )


@pytest.mark.slow
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_poison_message_is_given_up_after_bounded_attempts(
    stack: Stack, transport: str
) -> None:
    agent = await asyncio.to_thread(stack.add_crashy, f"poisoned-{transport}", transport)
    crashes = 0
    async with await Frontend.registered(stack.ws_url, "sender") as frontend:
        poison_id = new_id("poison")
        await frontend.send_text("poison", message_id=poison_id, receiver_id=agent.name)
        others = [new_id("ok") for _ in range(3)]
        for number, message_id in enumerate(others):
            await frontend.send_text(f"ok {number}", message_id=message_id, receiver_id=agent.name)

        # The test is the agent's supervisor: whenever it dies, it is started again.
        async def supervise() -> None:
            nonlocal crashes
            while True:
                while agent.running:  # noqa: ASYNC110  (a process exit announces nothing)
                    await asyncio.sleep(0.05)
                assert agent.returncode == POISON_EXIT_CODE, agent.tail()
                crashes += 1
                assert crashes <= 2 * MAX_DELIVERIES, f"still crashing:\n{agent.tail()}"
                agent.ended_on_purpose = True
                offsets.append(restart(agent))

        def settled() -> bool:
            """Up, and its latest start registered (the server may still list the one
            before, within its grace)."""
            return agent.running and "registered as" in agent.output()[offsets[-1] :]

        offsets = [0]
        supervisor = asyncio.create_task(supervise())
        try:
            final = await frontend.next(
                of_type("REPLY", "ERROR", in_reply_to_message_id=poison_id), timeout=120
            )
            assert (final["message_type"], final["error_code"]) == ("ERROR", "internal"), final
            replies = [
                await frontend.next(of_type("REPLY", "ERROR", in_reply_to_message_id=other))
                for other in others
            ]
            # The server gives up on the poison when the crash that used its last attempt
            # closes the agent's link, which can be a moment before that process is reaped:
            # the supervisor stays on duty until the agent has been up and registered for a
            # while, so the last crash is restarted like the others.
            await _holds_for(settled, SETTLED_SECONDS, timeout=TIMEOUT)
        finally:
            supervisor.cancel()
            await asyncio.gather(supervisor, return_exceptions=True)
        assert [r["text_payload"] for r in replies] == [f"echo: ok {n}" for n in range(3)]
        later = [
            frame
            for frame in await frontend.barrier(timeout=TIMEOUT)
            if frame.get("message_type") in ("REPLY", "ERROR")
        ]
        assert later == [], later
        report_line(
            f"poison_message_{transport}",
            {"final": final["error_code"], "crashes": crashes, "max_deliveries": MAX_DELIVERIES},
        )


async def _holds_for(condition: Callable[[], bool], seconds: float, *, timeout: float) -> None:
    """Returns once `condition()` has held without a break for `seconds`."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        since: float | None = None
        while since is None or loop.time() - since < seconds:
            if not condition():
                since = None
            elif since is None:
                since = loop.time()
            await asyncio.sleep(0.05)
