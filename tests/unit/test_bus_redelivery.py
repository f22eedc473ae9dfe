"""Redelivery: the one set of rules both buses follow when a handler raises."""

from __future__ import annotations

import asyncio
import logging

import pytest

from agentcomm.bus.base import (
    BusUnavailable,
    Delivery,
    NotTaken,
    Redelivery,
    Requeue,
    Verdict,
)


def _delivery(attempt: int) -> Delivery:
    return Delivery("work", b"{}", "m1", redelivered=attempt > 1, attempt=attempt)


@pytest.mark.parametrize(
    ("error", "attempt", "verdict"),
    [
        (RuntimeError("boom"), 1, Verdict.RETRY),
        (RuntimeError("boom"), 2, Verdict.RETRY),
        (RuntimeError("boom"), 3, Verdict.DEAD_LETTER),
        (RuntimeError("boom"), 7, Verdict.DEAD_LETTER),
        (Requeue("not now"), 1, Verdict.RETRY),
        (Requeue("not now"), 3, Verdict.DEAD_LETTER),
        # Not the message's fault: never counted, so never dead-lettered, however late.
        (NotTaken("not started"), 1, Verdict.UNTOUCHED),
        (NotTaken("not started"), 3, Verdict.UNTOUCHED),
        (BusUnavailable("RabbitMQ is down"), 3, Verdict.BUS_FAILED),
        (asyncio.CancelledError(), 3, Verdict.CUT_OFF),
    ],
)
def test_the_verdict_on_a_delivery_whose_handler_raised(
    error: BaseException, attempt: int, verdict: Verdict
) -> None:
    assert Redelivery(max_deliveries=3).after(error, attempt) is verdict


def test_a_charged_attempt_is_retried_until_the_last_one() -> None:
    rules = Redelivery(max_deliveries=2)
    assert [rules.charge(attempt) for attempt in (1, 2, 3)] == [
        Verdict.RETRY,
        Verdict.DEAD_LETTER,
        Verdict.DEAD_LETTER,
    ]
    assert Redelivery(max_deliveries=1).charge(1) is Verdict.DEAD_LETTER


def _report(error: BaseException, attempt: int, caplog: pytest.LogCaptureFixture) -> None:
    rules = Redelivery(max_deliveries=3)
    logger = logging.getLogger("agentcomm.bus.test")
    with caplog.at_level(logging.DEBUG, logger="agentcomm.bus.test"):
        rules.report(logger, rules.after(error, attempt), error, _delivery(attempt))


def test_a_failure_is_an_error_with_its_traceback_and_its_attempt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError as exc:
        _report(exc, 2, caplog)
    [record] = caplog.records
    assert record.levelno == logging.ERROR
    assert record.getMessage() == "Handler failed for message m1 on work (attempt 2 of 3)"
    assert record.exc_info is not None
    assert record.exc_info[1] is not None
    assert "boom" in caplog.text


@pytest.mark.parametrize(
    ("error", "level", "line"),
    [
        (Requeue("busy"), logging.INFO, "Message m1 on work handed back (attempt 1 of 3): busy"),
        (NotTaken("stopping"), logging.INFO, "Message m1 on work given back untouched: stopping"),
        (
            BusUnavailable("down"),
            logging.WARNING,
            "Message m1 on work goes back to the queue: the bus failed while it was handled (down)",
        ),
    ],
)
def test_a_handed_back_delivery_is_one_plain_line(
    error: BaseException, level: int, line: str, caplog: pytest.LogCaptureFixture
) -> None:
    _report(error, 1, caplog)
    [record] = caplog.records
    assert (record.levelno, record.getMessage(), record.exc_info) == (level, line, None)


def test_a_handler_cut_off_is_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    _report(asyncio.CancelledError(), 1, caplog)
    assert caplog.records == []
