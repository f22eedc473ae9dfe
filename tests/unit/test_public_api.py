"""Every package's __all__ names what it exports, and nothing it does not."""

from __future__ import annotations

import importlib

import pytest

PACKAGES = ["agentcomm.protocol", "agentcomm.bus", "agentcomm.sdk", "agentcomm.broker"]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_is_honest(name: str) -> None:
    module = importlib.import_module(name)
    exported = module.__all__
    assert sorted(exported) == list(exported), f"{name}.__all__ is not sorted"
    assert len(set(exported)) == len(exported), f"{name}.__all__ has duplicates"
    for symbol in exported:
        assert hasattr(module, symbol), f"{name}.__all__ names {symbol!r}, which it lacks"
