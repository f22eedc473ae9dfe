"""Keeps long-lived connection state out of full garbage collections.

With thousands of sockets open, a full (generation 2) collection walks every object of every
connection, and nothing else runs meanwhile: with 10,000 sockets that was a pause of over a
second, felt by every frontend at once. Connections live for minutes to hours, so once a burst
of them has arrived their objects are moved to the collector's permanent generation
(`gc.freeze`), which full collections skip. Frozen objects are still freed by reference
counting; only reference cycles among them wait until they are unfrozen, which happens when
most of the frozen connections have gone.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)


# Young collections after 10,000 net allocations instead of 700, full ones after 100 of the
# middle generation instead of 10. A hub's messages live for milliseconds: collected every 700
# allocations they survived into the old generation, which filled with garbage of that kind and
# was walked in full several times a second (about 40 full collections of 15-45 ms CPU each in
# one presence benchmark; one with these thresholds).
SERVING_THRESHOLDS = (10_000, 10, 100)


def tune_collector_for_serving() -> None:
    """Call once a server process has started. What it made to start (modules, settings, the
    HTTP and gRPC servers, the bus) lives as long as the process; frozen, it is not walked by
    every later full collection again. Then the collector runs less often (SERVING_THRESHOLDS).
    """
    gc.collect()  # what start-up left as garbage is freed, not frozen
    gc.freeze()
    gc.set_threshold(*SERVING_THRESHOLDS)


# New connections since the last freeze that make it worth another one.
FREEZE_AFTER_NEW_CONNECTIONS = 500


class CollectorTuning:
    """Call `observe` now and then (the hub's sweep) with the number of open connections."""

    def __init__(self, freeze_after: int = FREEZE_AFTER_NEW_CONNECTIONS) -> None:
        self._freeze_after = freeze_after
        self._frozen_at = 0  # open connections at the last freeze

    def observe(self, connections: int) -> None:
        if connections - self._frozen_at >= self._freeze_after:
            gc.freeze()
            log.debug("Froze the collector's objects at %d connections", connections)
            self._frozen_at = connections
        elif self._frozen_at and connections < self._frozen_at // 2:
            # Most of what was frozen belongs to connections that closed: let full collections
            # see it again, so that their reference cycles can be freed.
            gc.unfreeze()
            log.debug("Unfroze the collector's permanent generation (%d connections)", connections)
            self._frozen_at = 0
