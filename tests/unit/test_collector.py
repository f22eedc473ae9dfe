"""Connection state is frozen out of full collections after a burst of connections, and let
back in once most of those connections have closed (so their reference cycles can be freed)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from agentcomm.server.collector import (
    SERVING_THRESHOLDS,
    CollectorTuning,
    tune_collector_for_serving,
)


@pytest.fixture(autouse=True)
def unfrozen_afterwards() -> Iterator[None]:
    thresholds = gc.get_threshold()
    gc.unfreeze()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_a_burst_of_connections_is_frozen_and_released_when_most_are_gone() -> None:
    tuning = CollectorTuning(freeze_after=100)
    tuning.observe(99)
    assert gc.get_freeze_count() == 0
    tuning.observe(100)
    assert gc.get_freeze_count() > 0
    gc.unfreeze()
    tuning.observe(150)  # fewer than 100 new since the freeze
    assert gc.get_freeze_count() == 0
    tuning.observe(60)  # still more than half of the 100 frozen
    assert gc.get_freeze_count() == 0
    tuning.observe(250)
    assert gc.get_freeze_count() > 0
    tuning.observe(100)  # fewer than half of the 250 frozen: released
    assert gc.get_freeze_count() == 0


class Node:
    def __init__(self) -> None:
        self.itself = self


def test_start_up_is_frozen_after_its_garbage_is_collected() -> None:
    garbage = weakref.ref(Node())  # a reference cycle nobody holds
    tune_collector_for_serving()
    assert gc.get_freeze_count() > 0
    assert garbage() is None  # collected, not frozen for good
    assert gc.get_threshold() == SERVING_THRESHOLDS


def test_the_rest_of_a_burst_is_frozen_once_no_new_connection_came() -> None:
    tuning = CollectorTuning(freeze_after=500, freeze_after_burst=50)
    tuning.observe(80)
    assert gc.get_freeze_count() == 0  # still arriving
    tuning.observe(80)
    assert gc.get_freeze_count() > 0
    gc.unfreeze()
    tuning.observe(100)
    tuning.observe(100)  # only 20 more since the freeze: not worth one
    assert gc.get_freeze_count() == 0


class _Node:
    def __init__(self) -> None:
        self.me = self


def test_garbage_already_unreachable_is_not_frozen_with_the_connections() -> None:
    garbage = _Node()  # a reference cycle: only the collector can free it
    gone = weakref.ref(garbage)
    del garbage
    CollectorTuning(freeze_after=10).observe(10)
    assert gc.get_freeze_count() > 0
    assert gone() is None
