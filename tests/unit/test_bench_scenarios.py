"""The bench's scenario registry: every scenario listed, each imported only when it runs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from agentcomm.bench.scenarios import SCENARIO_NAMES, SCENARIOS, load_scenario
from agentcomm.cli import build_command_line

# The heavy optional parts: matplotlib (the bench extra) and the AutoGen peer scenario.
HEAVY = ("matplotlib", "agentcomm.bench.plots", "agentcomm.bench.scenarios.peer")
SUBPROCESS_TIMEOUT = 60.0


def imported_after(code: str) -> list[str]:
    """The heavy modules imported by `code`, run in a fresh interpreter."""
    heavy = f"sorted(m for m in sys.modules if m.startswith({HEAVY!r}))"
    probe = f"{code}\nimport json, sys\nprint(json.dumps({heavy}))"
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=True,
    )
    return list(json.loads(done.stdout))


def test_importing_the_bench_cli_imports_nothing_heavy() -> None:
    assert imported_after("import agentcomm.bench.cli") == []


def test_the_agentcomm_parser_imports_nothing_heavy() -> None:
    assert imported_after("import agentcomm.cli; agentcomm.cli.build_parser()") == []


def test_agentcomm_bench_roundtrip_imports_nothing_heavy_on_its_way() -> None:
    # --duration 0 is refused after the scenario's name is checked, before anything starts.
    code = (
        "from agentcomm.cli import main\n"
        "assert main(['bench', 'roundtrip', '--duration', '0']) == 2"
    )
    assert imported_after(code) == []


def test_loading_the_scenarios_other_than_peer_imports_nothing_heavy() -> None:
    others = [name for name in SCENARIO_NAMES if name != "peer"]
    code = (
        "from agentcomm.bench.scenarios import load_scenario\n"
        f"for name in {others!r}: load_scenario(name)"
    )
    assert imported_after(code) == []


def test_the_peer_scenario_loads_its_module_when_asked() -> None:
    code = "from agentcomm.bench.scenarios import load_scenario; load_scenario('peer')"
    assert imported_after(code) == ["agentcomm.bench.scenarios.peer"]


@pytest.mark.parametrize("name", SCENARIO_NAMES)
def test_every_registered_scenario_loads_to_a_function(name: str) -> None:
    assert callable(load_scenario(name))


def test_the_registry_keeps_the_order_all_runs_in() -> None:
    # roundtrip-memory is compared with the peer measured before it.
    assert SCENARIO_NAMES == (
        "roundtrip",
        "peer",
        "roundtrip-memory",
        "fanout",
        "idle",
        "presence",
        "a2a",
        "roundtrip-traced",
        "stream",
        "history",
        "ask",
        "cluster",
    )
    assert set(SCENARIOS) == set(SCENARIO_NAMES)
    with pytest.raises(KeyError):
        load_scenario("all")


def test_bench_help_names_every_scenario() -> None:
    text = " ".join(build_command_line().commands["bench"].format_help().split())
    for name in SCENARIO_NAMES:
        assert f"{name}," in text or f"{name} " in text, name


def test_python_m_bench_help_names_every_scenario() -> None:
    from agentcomm.bench.__main__ import build_parser

    text = " ".join(build_parser().format_help().split())
    for name in SCENARIO_NAMES:
        assert name in text
