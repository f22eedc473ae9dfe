"""Writes to the conversation store off the chat path: a bounded queue and one writer task.

The chat path only calls `offer`, which never waits: the message goes into the queue, or, when
the queue is full (the database is down or slower than the chat), it is not kept and counted.
The writer takes what is queued in batches (one transaction each). A store that fails makes the
writer say so loudly once, show `degraded` (the hub's /readyz), and try the same batch again
with a growing pause; chat messages are never held up or lost by it, only history is.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time

from agentcomm.history.records import NewMessage, StoreUnavailable
from agentcomm.history.store import ConversationStore

log = logging.getLogger(__name__)

# Seconds before an answer whose TEXT was not stored yet is offered again.
_ANSWER_RETRY_DELAY = 1.0
# Pauses between tries while the store is down, growing to the last.
_RETRY_PAUSES = (0.2, 0.5, 1.0, 2.0, 5.0)


class HistoryWriter:
    """Owns the writer task; `start`, then `offer` from anywhere in the loop, `stop` at the end."""

    def __init__(
        self,
        store: ConversationStore,
        *,
        queue_size: int = 10_000,
        batch_size: int = 500,
        linger: float = 0.05,
    ) -> None:
        self.store = store
        self._queue: asyncio.Queue[NewMessage] = asyncio.Queue(maxsize=queue_size)
        self._batch_size = batch_size
        self._linger = linger
        self._task: asyncio.Task[None] | None = None
        self._problem: str | None = None
        self._down_since = 0.0
        self.dropped = 0
        self.written = 0

    @property
    def status(self) -> str:
        """`ok`, or `degraded: <what the database answered>` (shown by /readyz)."""
        return "ok" if self._problem is None else f"degraded: {self._problem}"

    async def start(self) -> None:
        """Opens the store (once: a failure shows as `degraded`, and the writer keeps trying)
        and starts the writer."""
        try:
            await self.store.open()
        except StoreUnavailable as exc:
            self._went_down(exc)
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="history-writer")

    def offer(self, message: NewMessage) -> None:
        """Queues `message` for the store without waiting; past the bound it is not kept."""
        try:
            self._queue.put_nowait(message)
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error(
                    "History queue is full (%d waiting): %d messages were not stored so far; "
                    "chat goes on without history (%s)",
                    self._queue.qsize(),
                    self.dropped,
                    self.status,
                )

    async def flush(self, timeout: float = 10.0) -> None:
        """Waits until everything offered so far was handled (written, or given up)."""
        async with asyncio.timeout(timeout):
            await self._queue.join()

    async def stop(self, timeout: float = 5.0) -> None:
        """Writes what is queued within `timeout`, then ends the writer; the rest is lost
        (logged)."""
        task, self._task = self._task, None
        if task is None:
            return
        with contextlib.suppress(TimeoutError):
            await self.flush(timeout)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if self._queue.qsize():
            log.warning("History: %d messages were not stored at stop", self._queue.qsize())

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            if self._linger and self._queue.qsize() < self._batch_size:
                # A moment for more to come: one transaction for many messages costs the chat
                # (whose event loop hands each batch over) far less than many small ones.
                await asyncio.sleep(self._linger)
            while len(batch) < self._batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._write(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _write(self, batch: list[NewMessage]) -> None:
        tries = 0
        while True:
            try:
                await self.store.open()
                seqs = await self.store.append(batch)
            except StoreUnavailable as exc:
                self._went_down(exc)
                await asyncio.sleep(_RETRY_PAUSES[min(tries, len(_RETRY_PAUSES) - 1)])
                tries += 1
                continue
            except Exception:
                # A bug, not an outage: this batch is given up, the writer goes on.
                log.exception("History: a batch of %d messages could not be stored", len(batch))
                return
            if self._problem is not None:
                log.warning(
                    "History store is back after %.1f s", time.monotonic() - self._down_since
                )
                self._problem = None
            self.written += len(batch)
            self._retry_unplaced(batch, seqs)
            return

    def _retry_unplaced(self, batch: list[NewMessage], seqs: list[int | None]) -> None:
        """An answer can overtake its TEXT on the way here (it is offered as it goes out, the
        TEXT once the bus confirmed it): offered again once, a moment later."""
        loop = asyncio.get_running_loop()
        for message, seq in zip(batch, seqs, strict=True):
            if seq is None and message.answers is not None and message.retries == 0:
                again = dataclasses.replace(message, retries=1)
                loop.call_later(_ANSWER_RETRY_DELAY, self.offer, again)

    def _went_down(self, exc: StoreUnavailable) -> None:
        if self._problem is None:
            log.error(
                "History store failed; chat goes on without history until it is back: %s", exc
            )
            self._down_since = time.monotonic()
        self._problem = str(exc).splitlines()[0][:300]
