"""What the first stop signal says (signals.py): what the stop waits for, how long, how to cut
it short."""

from __future__ import annotations

import signal

from agentcomm.signals import Waiting, counted, stopping_line


def test_the_stop_line_names_the_wait_and_the_way_out() -> None:
    waiting = Waiting(10.0, counted(1, "reply in progress", "replies in progress"))
    assert stopping_line(signal.SIGINT, waiting) == (
        "SIGINT received: stopping, waiting up to 10 s for 1 reply in progress — Ctrl+C again "
        "to stop now"
    )


def test_nothing_to_wait_for_and_sigterm_read_as_such() -> None:
    assert stopping_line(signal.SIGTERM, None) == (
        "SIGTERM received: stopping — SIGTERM again to stop now"
    )
    assert counted(2, "reply in progress", "replies in progress") == "2 replies in progress"
