"""The bus's one robust connection: reached with retries at start, closed within a bound.

After a successful start aio-pika reconnects it by itself for as long as the bus is open; the
retries here only cover a RabbitMQ that is not there (yet) when the process starts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection
from aio_pika.exceptions import CONNECTION_EXCEPTIONS, ProbableAuthenticationError
from aiormq.exceptions import InvalidFrameError

from agentcomm.bus.base import BusClosed, BusUnavailable
from agentcomm.bus.rabbitmq.nodes import Nodes
from agentcomm.bus.rabbitmq.wire.base import TRANSPORT_ERRORS, Wire

# The name operators filter on; it was the module's own name before the bus became a package.
log = logging.getLogger("agentcomm.bus.rabbitmq")

# The settings that say where RabbitMQ is, by whether the bus has several nodes.
_ADDRESS_SETTINGS = {False: "RABBITMQ_HOST, RABBITMQ_PORT", True: "RABBITMQ_HOSTS"}


async def connect_with_retries(
    wire: Wire,
    url: str,
    nodes: Nodes,
    *,
    name: str,
    attempts: int,
    heartbeat: int | None,
    timeout: float,
    backoff: tuple[float, float],
    reconnect_interval: float,
    closed: Callable[[], bool],
) -> AbstractRobustConnection:
    """Connects through `wire` to one of `nodes`, up to `attempts` times with a doubling pause
    (`backoff`: the first pause and the cap) between them; gives up early once `closed()`. Each
    attempt tries every node once."""
    where = describe(url, nodes)
    pause, most = backoff
    extra: dict[str, Any] = {}
    query = urlsplit(url).query
    if "reconnect_interval" not in query:
        extra["reconnect_interval"] = reconnect_interval
    if heartbeat is not None and "heartbeat" not in query:
        extra["heartbeat"] = heartbeat
    for attempt in range(1, attempts + 1):
        try:
            return await wire.connect(
                url, nodes, timeout=timeout, client_properties={"connection_name": name}, **extra
            )
        except (TimeoutError, *CONNECTION_EXCEPTIONS) as exc:
            reason = _connect_failure(exc)
            if attempt == attempts:
                log.warning(
                    "Cannot reach RabbitMQ at %s (attempt %d of %d): %s; giving up",
                    where,
                    attempt,
                    attempts,
                    reason,
                )
                raise BusUnavailable(
                    f"Cannot reach RabbitMQ at {where} after {attempts} "
                    f"attempt{'s' if attempts > 1 else ''}: {reason}. Check that RabbitMQ "
                    f"is running and that {_ADDRESS_SETTINGS[len(nodes.nodes) > 1]}, "
                    "RABBITMQ_VHOST and the credentials are right."
                ) from exc
            log.warning(
                "Cannot reach RabbitMQ at %s (attempt %d of %d): %s; retrying in %.1f s",
                where,
                attempt,
                attempts,
                reason,
                pause,
            )
        await asyncio.sleep(pause)
        pause = min(pause * 2, most)
        if closed():
            raise BusClosed("Cannot connect: the bus was closed while connecting.")
    raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover


async def close_connection(
    connection: AbstractRobustConnection, where: str, timeout: float
) -> None:
    """Closes `connection` within `timeout`; a failure to say goodbye is only logged."""
    try:
        async with asyncio.timeout(timeout):
            await connection.close()
    except (TimeoutError, *TRANSPORT_ERRORS) as exc:
        log.warning("Closing the connection to RabbitMQ at %s failed: %r", where, exc)
    except asyncio.CancelledError:
        if cancelled_by_caller():
            raise
        log.warning("The connection to RabbitMQ at %s died while it was closed", where)


def cancelled_by_caller() -> bool:
    """For a CancelledError: True when this task was cancelled, False when nobody did (the
    connection or channel died, and aiormq cancelled the call waiting on it)."""
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


def describe(url: str, address: object = None) -> str:
    """host:port/vhost of an AMQP URL, without the credentials; `address` (a node, the nodes)
    in place of the URL's host and port."""
    parts = urlsplit(url)
    if address is None:
        host = parts.hostname or "localhost"
        address = f"{host}:{parts.port or (5671 if parts.scheme == 'amqps' else 5672)}"
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    if vhost == "/" or "," in str(address):
        return f"{address} (vhost {vhost})"
    return f"{address}/{vhost}"


def _connect_failure(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, (ProbableAuthenticationError, InvalidFrameError)):
        # RabbitMQ closes the handshake without a reason for bad credentials, and answers an
        # unknown or forbidden vhost with Connection.Close instead of OpenOk.
        return (
            "RabbitMQ refused the connection (wrong user or password, or the vhost does not "
            "exist or is not permitted for the user)"
        )
    return str(exc) or repr(exc)


async def open_channels(
    connection: AbstractRobustConnection, where: str, timeout: float, close_timeout: float
) -> tuple[AbstractRobustChannel, AbstractRobustChannel]:
    """The bus's publishing channel (with publisher confirms) and its channel for declarations;
    closes the connection and raises BusUnavailable when they cannot be opened."""
    try:
        async with asyncio.timeout(timeout):
            publish_channel = connection.channel(publisher_confirms=True, on_return_raises=True)
            await publish_channel.initialize()
            admin_channel = connection.channel(publisher_confirms=False)
            await admin_channel.initialize()
    except (TimeoutError, *TRANSPORT_ERRORS) as exc:
        await close_connection(connection, where, close_timeout)
        raise BusUnavailable(
            f"Connected to RabbitMQ at {where} but could not open channels: {exc!r}."
        ) from exc
    return publish_channel, admin_channel
