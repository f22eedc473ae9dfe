"""Confirmed publishes on the bus's publishing channel, and what their failures mean.

The wire puts a publish on the link and reports how RabbitMQ took it; this waits for that
within the publish's timeout and turns each outcome into the bus's own error: returned (no
queue), refused (nack), not confirmed in time, the link or channel gone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aio_pika.abc import AbstractRobustChannel
from aiormq import spec

from agentcomm.bus.base import BusClosed, BusUnavailable, Unroutable
from agentcomm.bus.rabbitmq.turns import KeyedTurns
from agentcomm.bus.rabbitmq.wire.base import TRANSPORT_ERRORS, Refused, Returned, Wire


class ConfirmedPublisher:
    def __init__(
        self,
        wire: Wire,
        *,
        channel: Callable[[], AbstractRobustChannel | None],
        closed: Callable[[], bool],
        connected: Callable[[], bool],
        where: str,
    ) -> None:
        self._wire = wire
        self._channel = channel
        self._closed = closed
        self._connected = connected
        self._where = where
        # Held by message_id while a publish with that id waits for its confirm (see send).
        self._turns = KeyedTurns()

    async def send(
        self,
        queue: str,
        body: bytes,
        properties: spec.Basic.Properties,
        *,
        mandatory: bool,
        timeout: float,
        exchange: str = "",
    ) -> None:
        """Publishes to the queue named `queue` (or, with `exchange`, to that exchange with
        `queue` as routing key) and waits for the confirm; raises a BusError otherwise."""
        channel = self._channel()
        if channel is None or self._closed():
            raise BusClosed("Cannot publish: the bus is closed.")
        # A returned (unroutable) message is matched to its publish by message_id, so two
        # publishes with the same id in flight at once could swap their outcomes: one would be
        # reported stored while it was returned. Such publishes take turns; others never wait.
        message_id = properties.message_id or ""
        try:
            async with asyncio.timeout(timeout):
                await self._turns.take(message_id)
                try:
                    await self._wire.publish(channel, queue, body, properties, mandatory, exchange)
                finally:
                    self._turns.give_back(message_id)
        except Returned as exc:
            raise Unroutable(f"No queue named {queue!r} takes this message.") from exc
        except Refused as exc:
            target = _target(queue, exchange)
            raise BusUnavailable(
                f"RabbitMQ at {self._where} refused to store the message for {target}."
            ) from exc
        except TimeoutError as exc:
            target = _target(queue, exchange)
            if self._closed():
                raise BusClosed("Cannot publish: the bus was closed while publishing.") from exc
            if self._connected():
                raise BusUnavailable(
                    f"RabbitMQ at {self._where} did not take or confirm the message for "
                    f"{target} within {timeout:g} s."
                ) from exc
            raise BusUnavailable(
                f"Cannot publish to {target}: RabbitMQ at {self._where} is not reachable "
                f"(gave up after {timeout:g} s)."
            ) from exc
        except TRANSPORT_ERRORS as exc:
            target = _target(queue, exchange)
            raise BusUnavailable(
                f"Cannot publish to {target}: the connection to RabbitMQ at {self._where} "
                f"broke before the message was confirmed ({exc!r})."
            ) from exc
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling() == 0:
                target = _target(queue, exchange)
                # Nobody cancelled us: the channel closed and cancelled the pending confirm.
                raise BusUnavailable(
                    f"Cannot publish to {target}: the channel to RabbitMQ at {self._where} "
                    "closed before the message was confirmed."
                ) from exc
            raise


def _target(queue: str, exchange: str) -> str:
    """What a publish was for, in an error message: a queue, or a broadcast's exchange."""
    return f"exchange {exchange!r}" if exchange else repr(queue)
