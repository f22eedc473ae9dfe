"""Acks for one consumer channel, sent as few frames as the order of deliveries allows.

A consumer handling many deliveries at once finishes them in any order. Acking each one on its
own costs a frame (and RabbitMQ some work) per message; AMQP's `multiple` flag acks every
unsettled delivery up to a tag in one frame. So a handled delivery is only noted here, and a
flusher task, once the deliveries finished in this turn of the event loop are all noted, acks
the run of noted deliveries at the head of the channel's delivery order with one `multiple`
ack. Deliveries handled behind one still being handled are acked on their own in the same
write, so a slow message never holds the acks (and the prefetch window) of the others; nothing
is acked before it was handled.

Deliveries settled another way (nacked, rejected, acked on their own after a copy was
published) are noted as settled only after their own frame was sent, so a later `multiple` ack
can pass over them without touching them. Only unsettled deliveries are tracked, so one that
stays unsettled for long costs one entry, not one for each delivery behind it. Delivery tags
belong to a channel: a channel that died takes its unsettled deliveries back to the queue, and
its tracker is dropped with it.

The framed wire writes the ack frames itself (`AckFrames`, its link's fast path); the plain
wire sends them through aiormq.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from aiormq.abc import AbstractChannel

log = logging.getLogger(__name__)


class AckFrames(Protocol):
    def ack(self, channel: AbstractChannel, delivery_tag: int, multiple: bool) -> None:
        """Writes Basic.Ack; raises (writing nothing) once the channel is closed."""


class ChannelAcks:
    """The settlement state of one channel's deliveries, in delivery order."""

    def __init__(
        self,
        channel: AbstractChannel,
        queue: str,
        errors: tuple[type[BaseException], ...],
        frames: AckFrames | None = None,
    ):
        self.channel = channel
        self._frames = frames
        self._queue = queue
        self._errors = errors
        # The unsettled deliveries only, in the order RabbitMQ delivered them (tags grow in that
        # order, and a dict keeps it): tag -> handled and waiting for its ack. A delivery leaves
        # as soon as it is acked or settled, so one that stays unsettled (a long handler, an
        # agent holding a message) keeps one entry here, not one for every delivery after it.
        self._unsettled: dict[int, bool] = {}
        # Tags noted as handled since the flusher last looked.
        self._fresh: list[int] = []
        self._flusher: asyncio.Task[None] | None = None

    def delivered(self, tag: int) -> None:
        self._unsettled[tag] = False

    def handled(self, tag: int) -> None:
        """The delivery was handled: ack it (with the run it belongs to)."""
        if tag not in self._unsettled:
            # Settled already (or never delivered on this channel): acking it again would
            # make RabbitMQ close the channel.
            return
        self._unsettled[tag] = True
        self._fresh.append(tag)
        self._wake_flusher()

    def settled(self, tag: int) -> None:
        """The delivery was settled by a frame of its own that has been sent."""
        # Nothing to send: a later multiple ack passing over it touches only unsettled tags.
        self._unsettled.pop(tag, None)

    def __len__(self) -> int:
        """How many deliveries are tracked: the unsettled ones."""
        return len(self._unsettled)

    async def flush(self) -> None:
        """Returns once every ack that can be sent has been handed to the connection."""
        while (flusher := self._flusher) is not None and not flusher.done():
            await asyncio.shield(flusher)

    def _wake_flusher(self) -> None:
        if self._flusher is None or self._flusher.done():
            # A task rather than an ack per call: the deliveries handled in this turn of the
            # loop are all noted by the time it runs, and go out together.
            self._flusher = asyncio.get_running_loop().create_task(
                self._send_acks(), name=f"rabbitmq-acks-{self._queue}"
            )

    def _take_run(self) -> int | None:
        """Takes the handled run at the head of the order; the last tag in it, if any."""
        last: int | None = None
        unsettled = self._unsettled
        # Every tag before the head is settled, so a multiple ack up to the end of this run
        # covers only the run itself.
        while unsettled and unsettled[head := next(iter(unsettled))]:
            del unsettled[head]
            last = head
        return last

    async def _send_acks(self) -> None:
        channel = self.channel
        try:
            while self._fresh:
                fresh, self._fresh = self._fresh, []
                last = self._take_run()
                if last is not None:
                    await self._ack(channel, last, multiple=True)
                for tag in fresh:
                    if self._unsettled.get(tag):
                        # Handled behind one still running: acked alone, and gone from the
                        # order at once, so a later multiple ack passes over it.
                        del self._unsettled[tag]
                        await self._ack(channel, tag, multiple=False)
        except self._errors as exc:
            log.info(
                "Could not ack deliveries on %s (%r); RabbitMQ will deliver them again",
                self._queue,
                exc,
            )

    async def _ack(self, channel: AbstractChannel, tag: int, *, multiple: bool) -> None:
        frames = self._frames
        if frames is None:
            # wait=False: queued behind what this channel sent before, written with the rest
            # of this turn's frames.
            await channel.basic_ack(tag, multiple=multiple, wait=False)
            return
        frames.ack(channel, tag, multiple)
