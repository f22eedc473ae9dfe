"""Turns incoming envelopes into handler calls and the handler's results into envelopes.

No I/O of its own: the transport hands envelopes to `Dispatcher.handle` and gives it a
`publish` function. `handle` returns once the message is finished (its reply, or an ERROR,
published), which is when the transport acks it; it raises when the message must be given back
(`PublishFailed`, `HandlingAborted`).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agentcomm.protocol import Envelope, ErrorCode, MessageType
from agentcomm.sdk import envelopes
from agentcomm.sdk.calls import ANSWERING, Calls
from agentcomm.sdk.dedup import RecentIds
from agentcomm.sdk.errors import CallFailed, ErrorAnswer, HandlingAborted, PublishFailed
from agentcomm.sdk.merging import stream_merged
from agentcomm.sdk.message import Message, MessageHandler

if TYPE_CHECKING:
    from agentcomm.telemetry.spans import Tracing

log = logging.getLogger(__name__)

Publish = Callable[[Envelope], Awaitable[None]]

# Enough to recognise a redelivery after a reconnect, small enough not to matter in memory.
DONE_IDS_REMEMBERED = 10_000
EARLY_CANCELS_REMEMBERED = 1_000
ABORT_WAIT_SECONDS = 5.0


def _key(sender_id: str | None, message_id: str) -> str:
    """A message's identity: message_ids are unique per sender, not across senders (two
    frontends may both number their messages from 1), so duplicates are recognised by both."""
    return f"{sender_id or ''}\x00{message_id}"


@dataclass(slots=True)
class DispatchStats:
    """Counters reported by the `status` command."""

    handled: int = 0
    failed: int = 0
    cancelled: int = 0
    refused: int = 0
    duplicates: int = 0


@dataclass(eq=False, slots=True)
class _Handling:
    envelope: Envelope
    # The transport's task that runs the handler: no task of its own per message. It is
    # cancelled only while the message is in `_active`, that is inside `_process`.
    task: asyncio.Task[Any]
    # Why the task was cancelled: a CANCEL from the sender, or the agent stopping.
    cancel_requested: bool = False
    aborted: bool = False
    # Cancellations of `task` made here and not yet taken back: a handler may swallow one,
    # and the task must not go on to the transport's own work still marked as cancelled.
    cancels: int = 0


class Dispatcher:
    """Runs the agent's handler for each TEXT, at most `concurrency` at a time.

    `is_paused` is asked for each new TEXT (a paused agent refuses it with an ERROR);
    `on_change` is called whenever the agent turns busy (a first message in progress) or idle
    (none left): that is all a status report depends on. Calling it for every message would
    wake the heartbeat loop twice per message for nothing.
    """

    def __init__(
        self,
        handler: MessageHandler,
        publish: Publish,
        *,
        agent_id: str = "",
        concurrency: int = 16,
        is_paused: Callable[[], bool] = lambda: False,
        on_change: Callable[[], None] = lambda: None,
        tracing: Tracing | None = None,
        merge_seconds: float | None = None,
        calls: Calls | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1.")
        self.handler = handler
        self.publish = publish
        self.agent_id = agent_id
        self.concurrency = concurrency
        self.is_paused = is_paused
        self.on_change = on_change
        # None: one chunk per piece a handler yields; else merged (sdk/merging.py).
        self.merge_seconds = merge_seconds
        # The agent's calls to other agents: their answers come in here too.
        self.calls = calls
        self.stats = DispatchStats()
        self._slots = asyncio.Semaphore(concurrency)
        self._active: dict[str, _Handling] = {}
        self._done = RecentIds(DONE_IDS_REMEMBERED)
        self._cancelled_early = RecentIds(EARLY_CANCELS_REMEMBERED)
        self._closed = False
        # On: each handler call is a span, current while it runs (an author's spans nest).
        self._tracing = tracing

    @property
    def in_flight(self) -> int:
        return len(self._active)

    async def handle(self, envelope: Envelope) -> None:
        """Handles one incoming envelope; returning means it may be acked."""
        if envelope.message_type is MessageType.TEXT:
            await self._handle_text(envelope)
        elif envelope.message_type is MessageType.CANCEL:
            self._handle_cancel(envelope)
        elif self.calls is None or not self.calls.deliver(envelope):
            # Answers to calls no longer waited for (cancelled, timed out), and notices.
            log.debug(
                "Agent %s ignores %s %s", self.agent_id, envelope.message_type, envelope.message_id
            )

    def cancel(self, message_id: str) -> bool:
        """Cancels the handler working on `message_id`; its sender gets ERROR cancelled."""
        handling = next(
            (h for h in self._active.values() if h.envelope.message_id == message_id), None
        )
        return self._cancel(handling)

    def _cancel(self, handling: _Handling | None) -> bool:
        if handling is None or handling.task.done():
            return False
        handling.cancel_requested = True
        if handling.task.cancel():
            handling.cancels += 1
        return True

    def close_intake(self) -> None:
        """From now on new messages are given back instead of handled (the agent is stopping)."""
        self._closed = True

    async def drain(self, grace: float) -> int:
        """Waits up to `grace` seconds for messages in progress, then aborts the rest.

        Returns how many had to be aborted.
        """
        tasks = self._tasks()
        if tasks and grace > 0:
            await asyncio.wait(tasks, timeout=grace)
        aborted = self.abort_all()
        remaining = self._tasks()
        if remaining:
            # Aborted handlers only unwind; a handler that swallows its cancellation is not
            # waited for beyond this.
            await asyncio.wait(remaining, timeout=ABORT_WAIT_SECONDS)
        return aborted

    def abort_all(self) -> int:
        """Cancels every handler; their messages are given back to the queue, not answered."""
        count = 0
        for handling in self._active.values():
            if not handling.task.done():
                handling.aborted = True
                if handling.task.cancel():
                    handling.cancels += 1
                count += 1
        return count

    def _tasks(self) -> set[asyncio.Task[Any]]:
        return {h.task for h in self._active.values() if not h.task.done()}

    async def _handle_text(self, envelope: Envelope) -> None:
        message_id = envelope.message_id
        key = _key(envelope.sender_id, message_id)
        running = self._active.get(key)
        if running is not None:
            # A redelivery of a message still in progress: finish once, ack both.
            self.stats.duplicates += 1
            await asyncio.wait({running.task})
            if key in self._done:
                return
            raise HandlingAborted(f"Message {message_id} was not finished; it is given back.")
        if key in self._done:
            self.stats.duplicates += 1
            log.debug("Agent %s skips redelivered message %s", self.agent_id, message_id)
            return
        if self._closed:
            raise HandlingAborted(f"Agent {self.agent_id} is stopping; message {message_id} waits.")
        if key in self._cancelled_early:
            await self._send(self._cancelled(envelope))
            self._cancelled_early.discard(key)
            self.stats.cancelled += 1
        elif self.is_paused():
            await self._send(
                envelopes.error(
                    envelope,
                    self.agent_id,
                    ErrorCode.AGENT_OFFLINE,
                    f"Agent {self.agent_id} is paused and is not taking new messages.",
                )
            )
            self.stats.refused += 1
        else:
            await self._run(key, envelope)
        self._done.add(key)

    async def _run(self, key: str, envelope: Envelope) -> None:
        # The handler runs in the caller's task (the transport's, one per message already): a
        # CANCEL or an abort cancels that task while it is inside `_process`, which turns the
        # cancellation into the answer or the give-back, as a task of its own would.
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("Dispatcher.handle must run in an asyncio task.")
        handling = _Handling(envelope, task)
        active = self._active
        active[key] = handling
        if len(active) == 1:
            self.on_change()
        answering = ANSWERING.set(envelope)
        try:
            await self._process(handling)
        except asyncio.CancelledError:
            # Cancelled from outside: that goes on. Cancelled here (the agent stopping, or a
            # second CANCEL cutting off the first one's answer): the message is given back.
            if self._take_back_cancels(handling) > 0:
                raise
            raise HandlingAborted(
                f"Agent {self.agent_id} stopped before message {envelope.message_id} was finished."
            ) from None
        finally:
            ANSWERING.reset(answering)
            if self.calls is not None:
                # Calls the handler left running (in tasks it did not await) end with it.
                self.calls.cancel_under(envelope)
                self.calls.made_for(envelope)
            # Removed at once, in this same step: from here on the task is the transport's
            # again, and no CANCEL or abort may reach it.
            if active.get(key) is handling:
                del active[key]
                if not active:
                    self.on_change()
            self._take_back_cancels(handling)

    @staticmethod
    def _take_back_cancels(handling: _Handling) -> int:
        """Undoes this dispatcher's cancellations of the task; returns those left (from outside)."""
        task = handling.task
        while handling.cancels:
            handling.cancels -= 1
            task.uncancel()
        return task.cancelling()

    async def _process(self, handling: _Handling) -> None:
        envelope = handling.envelope
        try:
            async with self._slots:
                if self._tracing is None:
                    await self._produce(envelope)
                else:
                    await self._traced_produce(self._tracing, envelope)
            self.stats.handled += 1
        except asyncio.CancelledError:
            if not handling.cancel_requested or handling.aborted or not handling.cancels:
                raise
            # Taken as the answer `cancelled`, not as a cancellation of the task.
            handling.cancels -= 1
            handling.task.uncancel()
            await self._send(self._cancelled(envelope))
            self.stats.cancelled += 1
        except PublishFailed:
            raise
        except ErrorAnswer as answer:
            self.stats.failed += 1
            await self._send(envelopes.error(envelope, self.agent_id, answer.code, answer.text))
        except CallFailed as exc:
            # A call the handler made and did not deal with: its sender learns why, with the
            # code of the call's own end (a cycle, an agent offline, ...), not just "internal".
            self.stats.failed += 1
            log.info(
                "Agent %s could not answer %s: a call failed (%s: %s)",
                self.agent_id,
                envelope.message_id,
                exc.error_code,
                exc.text,
            )
            await self._send(envelopes.call_failed(envelope, self.agent_id, exc))
        except Exception as exc:
            log.exception(
                "The handler of agent %s failed on message %s", self.agent_id, envelope.message_id
            )
            self.stats.failed += 1
            await self._send(
                envelopes.error(
                    envelope,
                    self.agent_id,
                    ErrorCode.INTERNAL,
                    f"Agent {self.agent_id} failed to handle this message ({type(exc).__name__}).",
                )
            )

    async def _traced_produce(self, tracing: Tracing, envelope: Envelope) -> None:
        span = tracing.start(
            f"handle {envelope.message_type.value}",
            "consumer",
            attributes={
                "agentcomm.message.id": envelope.message_id,
                "agentcomm.conversation.id": envelope.conversation_id or "",
            },
        )
        with tracing.current(span):
            await self._produce(envelope)

    async def _produce(self, envelope: Envelope) -> None:
        result: Any = self.handler(Message.from_envelope(envelope, self.calls))
        reply_id = envelopes.answer_id(envelope)
        chunks = 0
        if inspect.isawaitable(result):
            text = await result
        elif isinstance(result, AsyncIterator):
            text, chunks = await self._stream(envelope, reply_id, result)
        else:
            raise TypeError(
                "The message handler must be an async function or an async generator; "
                f"it returned {type(result).__name__}."
            )
        if not isinstance(text, str):
            raise TypeError(f"The message handler returned {type(text).__name__}, not str.")
        made = self.calls.made_for(envelope) if self.calls is not None else None
        await self._send(
            envelopes.reply(envelope, self.agent_id, text, reply_id, chunks=chunks, calls=made)
        )

    async def _stream(
        self, envelope: Envelope, reply_id: str, parts: AsyncIterator[Any]
    ) -> tuple[str, int]:
        """Sends each part as a REPLY_CHUNK; returns the whole text and how many chunks."""
        sent: list[str] = []
        try:
            if self.merge_seconds is not None:

                def send(seq: int, delta: str) -> Awaitable[None]:
                    return self._send(
                        envelopes.chunk(envelope, self.agent_id, reply_id, seq, delta)
                    )

                return await stream_merged(parts, send, self.merge_seconds)
            async for delta in parts:
                if not isinstance(delta, str):
                    raise TypeError(f"The message handler yielded {type(delta).__name__}, not str.")
                if not delta:
                    continue  # an empty chunk would only use up a seq number
                await self._send(
                    envelopes.chunk(envelope, self.agent_id, reply_id, len(sent), delta)
                )
                sent.append(delta)
        finally:
            # Runs the generator's own cleanup at once, also when it was cancelled mid-stream.
            close = getattr(parts, "aclose", None)
            if close is not None:
                await close()
        return "".join(sent), len(sent)

    def _handle_cancel(self, envelope: Envelope) -> None:
        target = envelope.in_reply_to_message_id
        if not target:
            log.warning("Agent %s got a CANCEL that names no message", self.agent_id)
            return
        if not envelope.sender_id:
            # No sender named (not from a hub): it stops the message with that id, whoever sent it.
            self.cancel(target)
            return
        # Only the sender of a message can stop it: another sender's CANCEL finds nothing here.
        key = _key(envelope.sender_id, target)
        handling = self._active.get(key)
        if handling is None:
            if key not in self._done:
                # The CANCEL overtook its TEXT: answer the TEXT with "cancelled" when it arrives.
                self._cancelled_early.add(key)
            return
        self._cancel(handling)

    def _cancelled(self, envelope: Envelope) -> Envelope:
        return envelopes.error(
            envelope, self.agent_id, ErrorCode.CANCELLED, "The message was cancelled."
        )

    async def _send(self, envelope: Envelope) -> None:
        try:
            await self.publish(envelope)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise PublishFailed(
                f"Could not send {envelope.message_type} for message "
                f"{envelope.in_reply_to_message_id}: {exc}"
            ) from exc
