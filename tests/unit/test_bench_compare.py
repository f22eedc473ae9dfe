"""The before/after comparison of two benchmark runs reads each headline number from its
scenario's JSON and says how it stands against its target."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentcomm.bench.compare import HEADLINES, format_table, headline_rows, load_results, main


def write(folder: Path, **results: dict[str, object]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, result in results.items():
        (folder / f"{name}.json").write_text(json.dumps({"scenario": name, **result}))
    return folder


def test_headlines_are_read_from_each_run_and_tabled(tmp_path: Path) -> None:
    before = write(
        tmp_path / "before",
        roundtrip={"ratio_to_floor": 0.62, "roundtrips_per_s": 292},
        fanout={"sizes": [{"frontends": 10_000, "last_frontend_p99_ms": 1681.2}]},
    )
    after = write(
        tmp_path / "after",
        roundtrip={"ratio_to_floor": 1.05, "roundtrips_per_s": 640},
        fanout={"sizes": [{"frontends": 1000, "last_frontend_p99_ms": 9.0}]},
        idle={"kb_per_connection": 19.9},
    )
    rows = {
        h.label: (old, new)
        for h, old, new in headline_rows(load_results(before), load_results(after))
    }
    assert rows["roundtrip ratio_to_floor"] == (0.62, 1.05)
    assert rows["roundtrip round trips/s"] == (292.0, 640.0)
    # 10,000 frontends were measured only before; idle only after.
    assert rows["fanout 10,000 p99"] == (1681.2, None)
    assert rows["idle KB per connection"] == (None, 19.9)
    table = format_table(headline_rows(load_results(before), load_results(after)))
    assert "| roundtrip ratio_to_floor | 0.62 x | 1.05 x | ≥ 1 x |" in table
    assert "| fanout 10,000 p99 | 1,681 ms | — | ≤ 250 ms |" in table


def test_the_ratio_to_the_peer_comes_from_a_peer_run_beside_it(tmp_path: Path) -> None:
    folder = write(
        tmp_path / "run",
        **{"roundtrip-memory": {"roundtrips_per_s": 1800.0}, "peer": {"roundtrips_per_s": 1500.0}},
    )
    assert load_results(folder)["roundtrip-memory"]["ratio_to_peer"] == 1.2


@pytest.mark.parametrize(
    ("label", "value", "share"),
    [
        ("roundtrip ratio_to_floor", 0.5, 0.5),  # higher is better: half the target
        ("idle KB per connection", 20.0, 2.0),  # lower is better: half the target is twice as good
    ],
)
def test_share_of_target_is_above_one_when_met(label: str, value: float, share: float) -> None:
    [headline] = [h for h in HEADLINES if h.label == label]
    assert headline.share_of_target(value) == pytest.approx(share)


def test_folders_without_results_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(tmp_path / "none"), str(tmp_path / "none")]) == 2
    assert "need result JSON" in capsys.readouterr().err
