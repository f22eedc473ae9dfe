"""Routing strategies: plain functions over AgentInfo records, with no I/O and no state.

The broker's memory (who served which conversation, what is still unanswered, who was picked
last) lives in `routing.RoutingMemory`; it is handed in here as arguments, so that each rule can
be tested on its own with a handful of records.

Choosing an agent for a message without a receiver, in order:
1. eligible agents: online, not paused, not the sender;
2. those whose capabilities satisfy `metadata.required_capabilities` (a hard filter);
3. the agent that served the conversation before, while it is still among them;
4. otherwise the least busy, ties broken round-robin.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agentcomm.protocol.models import AgentInfo
from agentcomm.protocol.vocabulary import AgentState

REQUIRED_CAPABILITIES_KEY = "required_capabilities"

# A capability requirement: name -> the value it must have, or None when any value will do.
Requirements = Mapping[str, str | None]


class RequirementsError(ValueError):
    """`metadata.required_capabilities` has a shape the broker cannot read."""


@dataclass(frozen=True, slots=True)
class Chosen:
    """An agent was found; `reason` says which rule picked it (for logs)."""

    agent: AgentInfo
    reason: str


@dataclass(frozen=True, slots=True)
class NoneAvailable:
    """No agent can take the message; `text` is the sentence the sender will read."""

    text: str


def is_online(agent: AgentInfo) -> bool:
    """Reachable at all: a message addressed to it by name may be routed."""
    return agent.is_online and agent.status is not AgentState.OFFLINE


def is_eligible(agent: AgentInfo) -> bool:
    """May be chosen for a message without a receiver: online and not paused."""
    return is_online(agent) and agent.status is not AgentState.PAUSED


def parse_requirements(metadata: Mapping[str, Any] | None) -> dict[str, str | None]:
    """Reads `metadata.required_capabilities`.

    Accepted shapes: a list of names, a comma-separated string of names, or an object
    {name: required value}. In the list and string forms `name=value` asks for a value too.
    An empty or absent entry means no requirement. Raises RequirementsError otherwise.
    """
    raw = (metadata or {}).get(REQUIRED_CAPABILITIES_KEY)
    if raw is None:
        return {}
    if isinstance(raw, str):
        return _parse_names(raw.split(","))
    if isinstance(raw, list):
        if not all(isinstance(item, str) for item in raw):
            raise RequirementsError(
                "metadata.required_capabilities must list capability names as strings."
            )
        return _parse_names(raw)
    if isinstance(raw, dict):
        return {
            str(name).strip(): _required_value(value)
            for name, value in raw.items()
            if str(name).strip()
        }
    raise RequirementsError(
        "metadata.required_capabilities must be a list of names, a comma-separated string "
        "or an object of name: value."
    )


def _parse_names(items: Iterable[str]) -> dict[str, str | None]:
    required: dict[str, str | None] = {}
    for item in items:
        name, has_value, value = item.partition("=")
        name = name.strip()
        if name:
            required[name] = value.strip() if has_value else None
    return required


def _required_value(value: Any) -> str | None:
    # Agents advertise capabilities as strings; JSON true/1 must match "true"/"1".
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).strip()


def satisfies(agent: AgentInfo, required: Requirements) -> bool:
    """Has every named capability, with the same value where one is required."""
    for name, value in required.items():
        if name not in agent.capabilities:
            return False
        if value is not None and agent.capabilities[name].strip() != value:
            return False
    return True


def describe_requirements(required: Requirements) -> str:
    return ", ".join(
        name if value is None else f"{name}={value}" for name, value in required.items()
    )


def missing_sentence(candidates: Sequence[AgentInfo], required: Requirements) -> str:
    """Why no candidate satisfies `required`, naming what was missing."""
    unmet = {
        name: value
        for name, value in required.items()
        if not any(satisfies(agent, {name: value}) for agent in candidates)
    }
    if unmet:
        return (
            "No available agent has the required capabilities: "
            f"{describe_requirements(unmet)} (required: {describe_requirements(required)})."
        )
    return (
        "No single available agent has all the required capabilities together: "
        f"{describe_requirements(required)}."
    )


def by_capabilities(candidates: Iterable[AgentInfo], required: Requirements) -> list[AgentInfo]:
    return [agent for agent in candidates if satisfies(agent, required)]


def sticky(candidates: Sequence[AgentInfo], previous_agent_id: str | None) -> AgentInfo | None:
    """The agent that served the conversation, if it is still a candidate."""
    if previous_agent_id is None:
        return None
    return next((agent for agent in candidates if agent.agent_id == previous_agent_id), None)


def load_key(agent: AgentInfo, unanswered: int) -> tuple[int, int]:
    """How loaded an agent is; smaller is less busy.

    An agent reporting itself busy ranks after every agent that does not, whatever the
    counts; among equals, what this broker sent it and has not seen answered plus what the
    server says the agent is working on.
    """
    return (1 if agent.status is AgentState.BUSY else 0, unanswered + max(agent.in_flight, 0))


def least_busy(
    candidates: Sequence[AgentInfo],
    unanswered: Callable[[str], int],
    last_pick: str | None,
) -> AgentInfo:
    """The least loaded candidate; among equally loaded ones, the next after `last_pick`.

    Round-robin is over agent ids in sorted order, so it stays fair when agents come and go.
    `candidates` must not be empty.
    """
    keys = {agent.agent_id: load_key(agent, unanswered(agent.agent_id)) for agent in candidates}
    best = min(keys.values())
    tied = sorted((agent for agent in candidates if keys[agent.agent_id] == best), key=_agent_id)
    if last_pick is not None:
        for agent in tied:
            if agent.agent_id > last_pick:
                return agent
    return tied[0]


def _agent_id(agent: AgentInfo) -> str:
    return agent.agent_id


def choose_agent(
    agents: Iterable[AgentInfo],
    *,
    sender_id: str | None,
    required: Requirements,
    previous_agent_id: str | None,
    unanswered: Callable[[str], int],
    last_pick: str | None,
) -> Chosen | NoneAvailable:
    """Picks the agent for a message that names no receiver (see the module docstring)."""
    known = [agent for agent in agents if agent.agent_id != sender_id]
    eligible = [agent for agent in known if is_eligible(agent)]
    if not eligible:
        if any(is_online(agent) for agent in known):
            return NoneAvailable("No agent is available: every online agent is paused.")
        return NoneAvailable("No agent is online to take this message.")
    candidates = by_capabilities(eligible, required)
    if not candidates:
        return NoneAvailable(missing_sentence(eligible, required))
    previous = sticky(candidates, previous_agent_id)
    if previous is not None:
        return Chosen(previous, "conversation")
    return Chosen(least_busy(candidates, unanswered, last_pick), "least busy")
