"""The demo agents behind `agentcomm agent echo|typist`, built on the SDK like any other agent.

- echo: replies "echo: <text>" at once.
- typist: streams a sentence about the input word by word at a steady pace (REPLY_CHUNKs, then
  the whole REPLY); its `pace` command changes the pace.
- planner: asks `echo` and `typist` in parallel and streams back what they answer, the typist's
  words as they come (calls between agents, docs/agents.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from agentcomm.bus import Bus
from agentcomm.config import Settings
from agentcomm.sdk.agent import Agent
from agentcomm.sdk.errors import AgentError, CallFailed
from agentcomm.sdk.message import Message

log = logging.getLogger(__name__)

DEMO_KINDS = ("echo", "typist", "planner")
TYPIST_SECONDS_PER_WORD = 0.05
MAX_TYPIST_MS_PER_WORD = 10_000


def typist_answer(text: str) -> str:
    """The sentence the typist types for `text`."""
    words = text.split()
    if not words:
        return "You sent an empty message, so there is nothing to type back."
    count = f"{len(words)} word" + ("" if len(words) == 1 else "s")
    return f'You wrote {count}: "{" ".join(words)}". I am typing them back one word at a time.'


def planner_answer(text: str) -> str:
    """What the planner answers to `text` when echo and typist both answer."""
    return f"typist: {typist_answer(text)}\necho: echo: {text}"


def build_demo_agent(
    kind: str,
    settings: Settings,
    *,
    name: str | None = None,
    agent_id: str | None = None,
    transport: str | None = None,
    bus: Bus | None = None,
) -> Agent:
    """A demo agent, not started; the dev stack starts it in-process on its shared bus."""
    if kind == "echo":
        agent = Agent(
            name or kind,
            agent_id=agent_id,
            capabilities={"kind": "echo"},
            settings=settings,
            transport=transport,
            bus=bus,
        )
        _make_echo(agent)
        return agent
    if kind == "typist":
        agent = Agent(
            name or kind,
            agent_id=agent_id,
            capabilities={"kind": "typist", "streaming": "true"},
            settings=settings,
            transport=transport,
            bus=bus,
        )
        _make_typist(agent)
        return agent
    if kind == "planner":
        agent = Agent(
            name or kind,
            agent_id=agent_id,
            capabilities={"kind": "planner"},
            settings=settings,
            transport=transport,
            bus=bus,
        )
        _make_planner(agent)
        return agent
    raise ValueError(f"Unknown demo agent {kind!r}; choose one of: {', '.join(DEMO_KINDS)}.")


def _make_echo(agent: Agent) -> None:
    @agent.on_message
    async def echo(message: Message) -> str:
        return f"echo: {message.text}"


def _make_typist(agent: Agent) -> None:
    # One value per agent, changed by its `pace` command.
    pace = {"seconds_per_word": TYPIST_SECONDS_PER_WORD}

    @agent.on_message
    async def type_out(message: Message) -> AsyncIterator[str]:
        words = typist_answer(message.text).split(" ")
        for index, word in enumerate(words):
            await asyncio.sleep(pace["seconds_per_word"])
            yield word if index == len(words) - 1 else word + " "

    @agent.command("pace")
    async def set_pace(content: str, parameters: dict[str, str]) -> str:
        raw = parameters.get("ms", content).strip()
        if not raw.isdigit() or not 0 < int(raw) <= MAX_TYPIST_MS_PER_WORD:
            raise ValueError(f"pace needs milliseconds per word, 1-{MAX_TYPIST_MS_PER_WORD}")
        pace["seconds_per_word"] = int(raw) / 1000
        return f"typing at {raw} ms per word"


def _make_planner(agent: Agent) -> None:
    @agent.on_message
    async def plan(message: Message) -> AsyncIterator[str]:
        # Both calls run at once: the echo's answer is usually in before the typist's first word.
        echoed = asyncio.create_task(message.ask("echo", message.text))
        try:
            yield "typist: "
            try:
                async for piece in message.ask_stream("typist", message.text):
                    yield piece
            except CallFailed as exc:
                yield f"(no answer: {exc.error_code})"
            try:
                yield f"\necho: {await echoed}"
            except CallFailed as exc:
                yield f"\necho: (no answer: {exc.error_code})"
        finally:
            # Cancelled or failed midway: the echo call goes too (its CANCEL is sent for it).
            echoed.cancel()


async def run_demo_agent(
    kind: str,
    settings: Settings,
    *,
    name: str | None = None,
    agent_id: str | None = None,
    transport: str | None = None,
    bus: Bus | None = None,
) -> int:
    """Runs a demo agent until SIGINT/SIGTERM, a shutdown command, or (in-process, with `bus`)
    until cancelled. Returns the process exit code."""
    try:
        agent = build_demo_agent(
            kind, settings, name=name, agent_id=agent_id, transport=transport, bus=bus
        )
    except ValueError as exc:
        log.error("Cannot start the %s agent: %s", kind, exc)
        return 2
    try:
        # In-process the host owns the signals; a standalone agent stops itself on them.
        await agent.serve(handle_signals=bus is None)
    except AgentError as exc:
        # Once registered, the agent has said itself why it stopped.
        if agent.id is None:
            log.error("The hub refused the %s agent: %s", kind, exc)
        return 1
    return 0
