"""Fixtures shared by every test layer: real RabbitMQ in a fresh vhost, free ports.

Under CI (CI=true) a missing RabbitMQ is a failure, never a skip.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest

ON_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require(available: bool, what: str) -> None:
    """Missing infrastructure is a skip on a laptop and a failure on CI."""
    if available:
        return
    if ON_CI:
        pytest.fail(f"{what} is not available (CI=true: this is a failure)")
    pytest.skip(f"{what} is not available")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rabbitmq_reachable(host: str = "127.0.0.1", port: int = 5672) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


# rabbitmqctl fails now and then when many runs share the machine (each call takes a port of a
# small range for its own Erlang node); a few tries apart make that a non-event.
_RABBITMQCTL_TRIES = 4


def _rabbitmqctl(*args: str) -> None:
    for attempt in range(1, _RABBITMQCTL_TRIES + 1):
        done = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, timeout=60)
        if done.returncode == 0:
            return
        if attempt == _RABBITMQCTL_TRIES:
            raise RuntimeError(
                f"rabbitmqctl {' '.join(args)} failed {attempt} times (exit {done.returncode}): "
                f"{done.stderr.decode(errors='replace').strip()[-500:]}"
            )
        time.sleep(0.5 * attempt)


@pytest.fixture(scope="session")
def rabbitmq_available() -> None:
    if rabbitmq_reachable():
        return
    if ON_CI:
        pytest.fail("RabbitMQ is not reachable on 127.0.0.1:5672 (CI=true: this is a failure)")
    pytest.skip("RabbitMQ is not running on 127.0.0.1:5672")


@pytest.fixture
def rabbitmq_vhost(rabbitmq_available: None) -> Iterator[str]:
    """A fresh, empty vhost for one test, so tests never share queues."""
    if shutil.which("rabbitmqctl") is None:
        pytest.fail("rabbitmqctl is needed to create test vhosts")
    vhost = f"agentcomm_test_{uuid.uuid4().hex[:12]}"
    _rabbitmqctl("add_vhost", vhost)
    _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    try:
        yield vhost
    finally:
        subprocess.run(
            ["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True, timeout=60
        )


@pytest.fixture
def rabbitmq_env(rabbitmq_vhost: str) -> dict[str, str]:
    """Settings overrides pointing at the test's own vhost."""
    return {
        "rabbitmq_host": "127.0.0.1",
        "rabbitmq_port": "5672",
        "rabbitmq_vhost": rabbitmq_vhost,
        "message_bus": "rabbitmq",
    }


def postgres_reachable(host: str = "127.0.0.1", port: int = 5432) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A throwaway PostgreSQL database for this test run (127.0.0.1:5432, user postgres, trust
    auth), dropped at the end; its URL as HISTORY_URL takes it. Under CI a missing PostgreSQL
    is a failure."""
    if not postgres_reachable():
        if ON_CI:
            pytest.fail(
                "PostgreSQL is not reachable on 127.0.0.1:5432 (CI=true: this is a failure)"
            )
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
    import asyncio
    import concurrent.futures

    import asyncpg

    name = f"agentcomm_test_{uuid.uuid4().hex[:12]}"

    async def admin(statement: str) -> None:
        connection = await asyncpg.connect(
            host="127.0.0.1", port=5432, user="postgres", database="postgres", timeout=10
        )
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    def run(statement: str) -> None:
        # In a thread of its own: the fixture may be set up from inside a running event loop.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, admin(statement)).result(timeout=30)

    run(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
