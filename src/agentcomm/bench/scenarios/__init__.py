"""One module per scenario; each `run(context)` returns the scenario's JSON object.

The registry names each scenario's function by import path and imports it only when the
scenario runs: `peer` drives AutoGen and others may grow heavy imports, and neither listing
the scenarios nor running `roundtrip` should pay for them.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, TypeAlias, cast

if TYPE_CHECKING:
    from agentcomm.bench.context import BenchContext, Result

Scenario: TypeAlias = "Callable[[BenchContext], Awaitable[Result]]"

# In the order `all` runs them: peer before roundtrip-memory so that the latter can be
# compared with it.
SCENARIOS: Mapping[str, str] = MappingProxyType(
    {
        "roundtrip": "agentcomm.bench.scenarios.roundtrip:run_rabbitmq",
        "peer": "agentcomm.bench.scenarios.peer:run",
        "roundtrip-memory": "agentcomm.bench.scenarios.roundtrip:run_memory",
        "fanout": "agentcomm.bench.scenarios.fanout:run",
        "idle": "agentcomm.bench.scenarios.idle:run",
        "presence": "agentcomm.bench.scenarios.presence:run",
        "a2a": "agentcomm.bench.scenarios.a2a:run",
        "roundtrip-traced": "agentcomm.bench.scenarios.traced:run",
        "stream": "agentcomm.bench.scenarios.stream:run",
        "history": "agentcomm.bench.scenarios.history:run",
        "ask": "agentcomm.bench.scenarios.ask:run",
        "cluster": "agentcomm.bench.scenarios.cluster:run",
    }
)
SCENARIO_NAMES = tuple(SCENARIOS)


def load_scenario(name: str) -> Scenario:
    """The function that runs the scenario `name`, its module imported now.

    Raises KeyError for a name that is not a scenario.
    """
    module_name, _, function = SCENARIOS[name].partition(":")
    found = getattr(importlib.import_module(module_name), function)
    if not callable(found):
        raise TypeError(f"{SCENARIOS[name]} is not a scenario function.")
    return cast("Scenario", found)
