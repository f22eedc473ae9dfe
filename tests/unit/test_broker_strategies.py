"""The broker's routing strategies, one rule at a time, over hand-made AgentInfo records."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from agentcomm.broker import strategies
from agentcomm.broker.strategies import Chosen, NoneAvailable
from agentcomm.protocol.models import AgentInfo
from agentcomm.protocol.vocabulary import AgentState


def agent(
    agent_id: str,
    *,
    status: AgentState = AgentState.ONLINE,
    online: bool = True,
    capabilities: dict[str, str] | None = None,
    in_flight: int = 0,
) -> AgentInfo:
    return AgentInfo(
        agent_id=agent_id,
        agent_name=agent_id,
        is_online=online,
        last_seen="2026-01-01T00:00:00.000Z",
        status=status,
        capabilities=capabilities or {},
        in_flight=in_flight,
    )


def no_load(_agent_id: str) -> int:
    return 0


def choose(
    agents: list[AgentInfo],
    *,
    sender_id: str | None = "web_0123456789abcdef",
    required: Mapping[str, str | None] | None = None,
    previous: str | None = None,
    unanswered: Mapping[str, int] | None = None,
    last_pick: str | None = None,
) -> Chosen | NoneAvailable:
    loads = dict(unanswered or {})
    return strategies.choose_agent(
        agents,
        sender_id=sender_id,
        required=required or {},
        previous_agent_id=previous,
        unanswered=lambda agent_id: loads.get(agent_id, 0),
        last_pick=last_pick,
    )


def chosen_id(result: Chosen | NoneAvailable) -> str:
    assert isinstance(result, Chosen), result
    return result.agent.agent_id


# -- eligibility -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "online", "eligible"),
    [
        (AgentState.ONLINE, True, True),
        (AgentState.BUSY, True, True),
        (AgentState.PAUSED, True, False),
        (AgentState.OFFLINE, True, False),
        (AgentState.ONLINE, False, False),
    ],
)
def test_only_online_not_paused_agents_are_eligible(
    status: AgentState, online: bool, eligible: bool
) -> None:
    assert strategies.is_eligible(agent("a", status=status, online=online)) is eligible


def test_paused_agent_is_still_online_for_messages_that_name_it() -> None:
    assert strategies.is_online(agent("a", status=AgentState.PAUSED))


def test_no_agents_at_all_is_no_agent_available() -> None:
    result = choose([])
    assert isinstance(result, NoneAvailable)
    assert "No agent is online" in result.text


def test_only_offline_agents_is_no_agent_available() -> None:
    result = choose([agent("a", online=False, status=AgentState.OFFLINE)])
    assert isinstance(result, NoneAvailable)


def test_only_paused_agents_says_they_are_paused() -> None:
    result = choose([agent("a", status=AgentState.PAUSED)])
    assert isinstance(result, NoneAvailable)
    assert "paused" in result.text


def test_paused_agent_is_skipped_for_an_online_one() -> None:
    agents = [agent("a", status=AgentState.PAUSED), agent("b")]
    assert chosen_id(choose(agents)) == "b"


def test_never_chooses_the_sender() -> None:
    agents = [agent("a"), agent("b", in_flight=5)]
    assert chosen_id(choose(agents, sender_id="a")) == "b"
    assert isinstance(choose([agent("a")], sender_id="a"), NoneAvailable)


# -- capabilities ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, {}),
        ("", {}),
        ([], {}),
        ({}, {}),
        (["code", "search"], {"code": None, "search": None}),
        ("code, search", {"code": None, "search": None}),
        ("code,,", {"code": None}),
        ({"lang": "python", "code": ""}, {"lang": "python", "code": None}),
        ({"stream": True, "size": 3, "any": None}, {"stream": "true", "size": "3", "any": None}),
        (["lang=python", "code"], {"lang": "python", "code": None}),
        ("lang = python , code", {"lang": "python", "code": None}),
    ],
)
def test_required_capabilities_shapes(raw: Any, expected: dict[str, str | None]) -> None:
    metadata = None if raw is None else {"required_capabilities": raw}
    assert strategies.parse_requirements(metadata) == expected


@pytest.mark.parametrize("raw", [3, 2.5, True, ["code", 3], [["nested"]]])
def test_unreadable_required_capabilities_are_refused(raw: Any) -> None:
    with pytest.raises(strategies.RequirementsError, match="required_capabilities"):
        strategies.parse_requirements({"required_capabilities": raw})


def test_satisfies_needs_every_key_and_value_where_given() -> None:
    coder = agent("a", capabilities={"code": "yes", "lang": "python"})
    assert strategies.satisfies(coder, {})
    assert strategies.satisfies(coder, {"code": None})
    assert strategies.satisfies(coder, {"code": None, "lang": "python"})
    assert not strategies.satisfies(coder, {"lang": "rust"})
    assert not strategies.satisfies(coder, {"code": None, "search": None})


def test_capable_agents_are_chosen_over_less_loaded_ones() -> None:
    agents = [agent("idle"), agent("coder", capabilities={"code": "1"}, in_flight=9)]
    assert chosen_id(choose(agents, required={"code": None})) == "coder"


def test_missing_capability_is_named_in_the_sentence() -> None:
    agents = [agent("a", capabilities={"code": "1"}), agent("b", capabilities={"lang": "go"})]
    result = choose(agents, required={"code": None, "lang": "python"})
    assert isinstance(result, NoneAvailable)
    assert "lang=python" in result.text
    assert "code," not in result.text.split("(")[0]


def test_capabilities_spread_over_agents_are_described_as_such() -> None:
    agents = [agent("a", capabilities={"code": "1"}), agent("b", capabilities={"search": "1"})]
    result = choose(agents, required={"code": None, "search": None})
    assert isinstance(result, NoneAvailable)
    assert "No single available agent" in result.text
    assert "code, search" in result.text


def test_capabilities_of_paused_agents_do_not_count() -> None:
    agents = [agent("a", status=AgentState.PAUSED, capabilities={"code": "1"}), agent("b")]
    result = choose(agents, required={"code": None})
    assert isinstance(result, NoneAvailable)
    assert "code" in result.text


# -- stickiness --------------------------------------------------------------------------------


def test_conversation_stays_with_its_agent_even_when_busier() -> None:
    agents = [agent("a"), agent("b", in_flight=3)]
    result = choose(agents, previous="b")
    assert isinstance(result, Chosen)
    assert (result.agent.agent_id, result.reason) == ("b", "conversation")


def test_conversation_stays_with_an_agent_reporting_busy() -> None:
    agents = [agent("a"), agent("b", status=AgentState.BUSY)]
    assert chosen_id(choose(agents, previous="b")) == "b"


@pytest.mark.parametrize(
    "gone",
    [
        agent("b", online=False, status=AgentState.OFFLINE),
        agent("b", status=AgentState.PAUSED),
    ],
)
def test_conversation_moves_when_its_agent_is_not_available(gone: AgentInfo) -> None:
    assert chosen_id(choose([agent("a"), gone], previous="b")) == "a"


def test_conversation_moves_when_its_agent_lacks_a_required_capability() -> None:
    agents = [agent("a", capabilities={"code": "1"}), agent("b")]
    assert chosen_id(choose(agents, previous="b", required={"code": None})) == "a"


def test_conversation_with_an_unknown_agent_falls_back_to_least_busy() -> None:
    assert strategies.sticky([agent("a")], "zzz") is None
    assert strategies.sticky([agent("a")], None) is None


# -- least busy and round-robin ----------------------------------------------------------------


def test_least_busy_counts_unanswered_and_reported_in_flight() -> None:
    agents = [agent("a", in_flight=1), agent("b"), agent("c")]
    assert chosen_id(choose(agents, unanswered={"b": 2})) == "c"
    assert chosen_id(choose(agents, unanswered={"b": 2, "c": 2})) == "a"


def test_agent_reporting_busy_ranks_after_every_other() -> None:
    agents = [agent("a", status=AgentState.BUSY), agent("b", in_flight=7)]
    assert chosen_id(choose(agents)) == "b"


def test_busy_agents_are_still_used_when_all_are_busy() -> None:
    agents = [agent("a", status=AgentState.BUSY, in_flight=2), agent("b", status=AgentState.BUSY)]
    assert chosen_id(choose(agents)) == "b"


def test_ties_go_round_robin_in_id_order() -> None:
    agents = [agent("c"), agent("a"), agent("b")]
    picks: list[str] = []
    last_pick: str | None = None
    for _ in range(6):
        last_pick = strategies.least_busy(agents, no_load, last_pick).agent_id
        picks.append(last_pick)
    assert picks == ["a", "b", "c", "a", "b", "c"]


def test_round_robin_survives_the_last_pick_leaving() -> None:
    agents = [agent("a"), agent("c")]
    assert strategies.least_busy(agents, no_load, "b").agent_id == "c"
    assert strategies.least_busy(agents, no_load, "d").agent_id == "a"


def test_round_robin_only_among_the_least_loaded() -> None:
    agents = [agent("a"), agent("b", in_flight=1), agent("c")]
    assert strategies.least_busy(agents, no_load, "a").agent_id == "c"
    assert strategies.least_busy(agents, no_load, "c").agent_id == "a"


def test_negative_in_flight_from_a_confused_server_counts_as_zero() -> None:
    assert strategies.load_key(agent("a", in_flight=-4), 1) == (0, 1)
