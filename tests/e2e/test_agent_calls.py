"""End to end, on each bus: agents asking agents through the hub, each agent a process of its
own (the demo agents of the dev process on the in-process bus). The line-up's workers ask the
agents a message's metadata names (`{"asks": [...]}`, tests/e2e/agents/worker.py), and the
planner asks echo and typist.

Covered: ask_stream through one and two levels, ask by capability, the combined answer of the
planner, a CANCEL running down three levels, the cycle bound, and an asked agent killed
mid-answer (its asker gets agent_offline, never a hang).
"""

from __future__ import annotations

import signal

from agentcomm.sdk.demo_agents import planner_answer
from tests.e2e.agents.worker import reply_text
from tests.e2e.processes import poll
from tests.e2e.stack_chat import Chat
from tests.e2e.stacks import AGENT_TIMEOUT, DELIVERY_TIMEOUT, SLACK, Stack, off_loop, reply_for


def streamed(chat: Chat, text_id: str) -> str:
    """The chunks of the answer to `text_id` so far, joined."""
    return "".join(chunk.get("text_delta") or "" for chunk in chat.chunks(text_id))


async def test_the_planner_streams_what_echo_and_typist_answer(chat: Chat) -> None:
    text_id = await chat.send_text("plan a trip", receiver_id="planner")
    await chat.exactly_one_final_each([text_id])
    final = chat.finals(text_id)[0]
    assert final["message_type"] == "REPLY", final
    assert final["text_payload"] == planner_answer("plan a trip")
    assert chat.stream_text(text_id) == final["text_payload"]


async def test_asks_by_id_and_by_capability_two_levels_deep(chat: Chat) -> None:
    by_id = await chat.send_text(
        "pass it on", receiver_id="worker-alpha", metadata={"asks": ["worker-beta", "echo"]}
    )
    by_kind = await chat.send_text(
        "who types?", receiver_id="worker-gamma", metadata={"asks": ["skill=beta"]}
    )
    await chat.exactly_one_final_each([by_id, by_kind])
    assert chat.finals(by_id)[0]["text_payload"] == (
        "worker-alpha asked worker-beta: worker-beta asked echo: echo: pass it on"
    )
    assert chat.finals(by_kind)[0]["text_payload"] == (
        f"worker-gamma asked skill=beta: {reply_text('worker-beta', 'who types?')}"
    )
    assert chat.stream_text(by_id) == chat.finals(by_id)[0]["text_payload"]


async def test_a_cycle_of_calls_ends_in_call_cycle(chat: Chat) -> None:
    text_id = await chat.send_text(
        "round we go",
        receiver_id="worker-alpha",
        metadata={"asks": ["worker-beta", "worker-alpha"]},
    )
    await chat.exactly_one_final_each([text_id])
    final = chat.finals(text_id)[0]
    assert (final["message_type"], final["error_code"]) == ("ERROR", "call_cycle"), final
    assert "worker-alpha → worker-beta → worker-alpha" in final["text_payload"]


async def test_cancel_runs_down_three_levels(stack: Stack, chat: Chat) -> None:
    tree = ("worker-alpha", "worker-beta", "worker-gamma")
    offsets = {agent_id: len(stack.agents[agent_id].output()) for agent_id in tree}
    text_id = await chat.send_text(
        "a long way down " * 20,
        receiver_id="worker-alpha",
        metadata={"asks": ["worker-beta", "worker-gamma"], "ms_per_word": "200"},
    )
    await chat.until(
        lambda: "worker-gamma heard" in streamed(chat, text_id),
        timeout=15,
        what="the bottom of the tree streaming",
    )
    await chat.cancel(text_id)
    await chat.all_finals([text_id], timeout=10)
    final = chat.finals(text_id)[0]
    assert (final["message_type"], final["error_code"]) == ("ERROR", "cancelled"), final

    def every_level_cancelled() -> bool:
        return all(
            f"{agent_id} cancelled " in stack.agents[agent_id].output()[offsets[agent_id] :]
            for agent_id in tree
        )

    await off_loop(poll, every_level_cancelled, timeout=10, what="each level cancelled")
    # Everyone is free again.
    again = await chat.send_text("still there?", receiver_id="worker-gamma")
    await chat.all_finals([again], timeout=10)
    assert chat.finals(again)[0]["text_payload"] == reply_for("worker-gamma", "still there?")


async def test_an_asked_agent_killed_mid_answer_ends_in_agent_offline(
    stack: Stack, chat: Chat
) -> None:
    victim = await off_loop(stack.start_demo_agent, "typist", "typist-asked", "grpc")
    await off_loop(stack.server.command, "typist-asked", "pace", "300")
    text_id = await chat.send_text(
        "type this slowly for me", receiver_id="worker-alpha", metadata={"asks": ["typist-asked"]}
    )
    await chat.until(
        lambda: "You wrote" in streamed(chat, text_id),
        timeout=15,
        what="the asked typist streaming",
    )
    victim.send_signal(signal.SIGKILL)
    await chat.all_finals([text_id], timeout=AGENT_TIMEOUT + DELIVERY_TIMEOUT + 3 * SLACK + 5)
    await chat.exactly_one_final_each([text_id])
    final = chat.finals(text_id)[0]
    assert (final["message_type"], final["error_code"]) == ("ERROR", "agent_offline"), final
    assert "typist-asked" in final["text_payload"]
