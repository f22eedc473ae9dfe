"""Confirmed publishes on the bus's publishing channel, and what their failures mean.

The wire puts a publish on the link and reports how RabbitMQ took it; this waits for that
within the publish's timeout and turns each outcome into the bus's own error: returned (no
queue), refused (nack), not confirmed in time, the link or channel gone.

A refusal also renews the publishing channel (at most once per `RENEW_PAUSE`). RabbitMQ keeps,
per channel, its picture of each quorum queue it publishes to; a channel that first published
to a queue while the queue's leader was on a node being stopped (RabbitMQ 3.10 on a cluster
losing a node) can go on refusing every publish to that queue after the queue elected a new
leader, for as long as the channel lives. A fresh channel starts with a fresh picture.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from aio_pika.abc import AbstractRobustChannel
from aiormq import spec

from agentcomm.bus.base import BusClosed, BusUnavailable, Unroutable
from agentcomm.bus.rabbitmq.turns import KeyedTurns
from agentcomm.bus.rabbitmq.wire.base import TRANSPORT_ERRORS, Refused, Returned, Wire

log = logging.getLogger("agentcomm.bus.rabbitmq")

# The least time between two renewals of the publishing channel after refusals: a refusal
# during a leader's election is answered by the next, not by a renewal per publish.
RENEW_PAUSE = 1.0


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
        self._renewing: asyncio.Task[None] | None = None
        self._renewed_at = float("-inf")

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
            self._renew(channel)
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

    def _renew(self, channel: AbstractRobustChannel) -> None:
        """Replaces the publishing channel's link channel with a new one, in the background."""
        now = asyncio.get_running_loop().time()
        if self._renewing is not None or now - self._renewed_at < RENEW_PAUSE:
            return
        self._renewed_at = now
        self._renewing = asyncio.create_task(
            self._renew_channel(channel), name="rabbitmq-renew-publish-channel"
        )

    async def _renew_channel(self, channel: AbstractRobustChannel) -> None:
        try:
            log.info(
                "RabbitMQ at %s refused a publish; renewing the publishing channel", self._where
            )
            # Publishes in flight on the old one fail as a closed channel (BusUnavailable).
            await channel.close()
            if not self._closed():
                await channel.reopen()
        except (*TRANSPORT_ERRORS, RuntimeError) as exc:
            # The link itself is going: its reconnection brings a new channel anyway.
            log.info("Could not renew the publishing channel (%r)", exc)
        finally:
            self._renewing = None

    async def stop(self) -> None:
        """Waits out a renewal in progress (the bus is closing)."""
        renewing = self._renewing
        if renewing is not None:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing


def _target(queue: str, exchange: str) -> str:
    """What a publish was for, in an error message: a queue, or a broadcast's exchange."""
    return f"exchange {exchange!r}" if exchange else repr(queue)
