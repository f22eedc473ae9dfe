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


# Full collections after 100 collections of the middle generation instead of 10. Once start-up
# and connection state are frozen, the old generation holds little, so the collector's own
# brake (a full collection only when the old generation grew by a quarter) hardly holds: in one
# presence benchmark the hub made about 40 full collections of 15-45 ms CPU each. The young
# thresholds stay: raised, each young collection walks more and becomes a pause of its own.
SERVING_THRESHOLDS = (700, 10, 100)


def tune_collector_for_serving() -> None:
    """Call once a server process has started. What it made to start (modules, settings, the
    HTTP and gRPC servers, the bus) lives as long as the process; frozen, it is not walked by
    every later full collection again. Then the collector runs less often (SERVING_THRESHOLDS).
    """
    gc.collect()  # what start-up left as garbage is freed, not frozen
    gc.freeze()
    gc.set_threshold(*SERVING_THRESHOLDS)


# New connections since the last freeze that make it worth another one, during a burst; and
# after a burst (no new connection for one observation), the fewest worth freezing.
FREEZE_AFTER_NEW_CONNECTIONS = 500
FREEZE_AFTER_BURST = 50


class CollectorTuning:
    """Call `observe` now and then (the hub's sweep) with the number of open connections."""

    def __init__(
        self,
        freeze_after: int = FREEZE_AFTER_NEW_CONNECTIONS,
        freeze_after_burst: int = FREEZE_AFTER_BURST,
    ) -> None:
        self._freeze_after = freeze_after
        self._freeze_after_burst = freeze_after_burst
        self._frozen_at = 0  # open connections at the last freeze
        self._last_seen = 0

    def observe(self, connections: int) -> None:
        grown = connections - self._frozen_at
        burst_over = connections == self._last_seen and grown >= self._freeze_after_burst
        self._last_seen = connections
        if grown >= self._freeze_after or burst_over:
            # Garbage in the young generations would be frozen with the rest and kept until
            # the next unfreeze; collecting them first is cheap (the old generation, where
            # the open connections are, is not walked).
            gc.collect(1)
            gc.freeze()
            log.debug("Froze the collector's objects at %d connections", connections)
            self._frozen_at = connections
        elif self._frozen_at and connections < self._frozen_at // 2:
            # Most of what was frozen belongs to connections that closed: let full collections
            # see it again, so that their reference cycles can be freed.
            gc.unfreeze()
            log.debug("Unfroze the collector's permanent generation (%d connections)", connections)
            self._frozen_at = 0
