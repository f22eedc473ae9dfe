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
can pass over them without touching them. Delivery tags belong to a channel: a channel that
died takes its unsettled deliveries back to the queue, and its tracker is dropped with it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from aiormq.abc import AbstractChannel

log = logging.getLogger(__name__)


class ChannelAcks:
    """The settlement state of one channel's deliveries, in delivery order."""

    def __init__(
        self, channel: AbstractChannel, queue: str, errors: tuple[type[BaseException], ...]
    ):
        self.channel = channel
        self._queue = queue
        self._errors = errors
        # Delivery tags not yet passed by an ack, in the order RabbitMQ delivered them.
        self._order: deque[int] = deque()
        # tag -> True: handled, to be acked; False: settled by its own frame already.
        self._noted: dict[int, bool] = {}
        # Tags noted as handled since the flusher last looked.
        self._fresh: list[int] = []
        self._flusher: asyncio.Task[None] | None = None

    def delivered(self, tag: int) -> None:
        self._order.append(tag)

    def handled(self, tag: int) -> None:
        """The delivery was handled: ack it (with the run it belongs to)."""
        self._noted[tag] = True
        self._fresh.append(tag)
        self._wake_flusher()

    def settled(self, tag: int) -> None:
        """The delivery was settled by a frame of its own that has been sent."""
        # Nothing to send: the next run of acks passes over it.
        self._noted[tag] = False

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
        """Passes the noted run at the head of the order; the last tag in it to ack, if any."""
        last: int | None = None
        order, noted = self._order, self._noted
        while order and order[0] in noted:
            tag = order.popleft()
            if noted.pop(tag):
                last = tag
        return last

    async def _send_acks(self) -> None:
        channel = self.channel
        try:
            while self._fresh:
                fresh, self._fresh = self._fresh, []
                last = self._take_run()
                if last is not None:
                    # wait=False: queued behind what this channel sent before, written with
                    # the rest of this turn's frames.
                    await channel.basic_ack(last, multiple=True, wait=False)
                for tag in fresh:
                    if self._noted.get(tag):
                        # Handled behind one still running: acked alone, passed over later.
                        await channel.basic_ack(tag, wait=False)
                        self._noted[tag] = False
                self._take_run()
        except self._errors as exc:
            log.info(
                "Could not ack deliveries on %s (%r); RabbitMQ will deliver them again",
                self._queue,
                exc,
            )
