"""Fixtures of the abuse suite: every attack runs on both buses, against a hub of its own.

`bus` is parametrised over the in-process bus and RabbitMQ (a fresh vhost per test); under CI
(CI=true) a missing RabbitMQ is a failure, never a skip. The numbers of every attack are
gathered in `records`, printed at the end of the run and written as JSON to $ABUSE_RESULTS
when it is set (docs/reliability.md shows them).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.abuse.harness import Records

_RECORDS = pytest.StashKey[Records]()


@pytest.fixture(params=["memory", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
def bus(request: pytest.FixtureRequest) -> str:
    if request.param == "rabbitmq":
        request.getfixturevalue("rabbitmq_available")
    return str(request.param)


@pytest.fixture(scope="session")
def records(request: pytest.FixtureRequest) -> Iterator[Records]:
    gathered = Records()
    request.config.stash[_RECORDS] = gathered
    yield gathered
    gathered.write()


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    gathered = config.stash.get(_RECORDS, None)
    if gathered is not None and gathered.items:
        terminalreporter.section("abuse: hub memory and a bystander's latency")
        terminalreporter.write_line(gathered.table())
