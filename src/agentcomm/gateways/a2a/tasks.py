"""A2A tasks as the gateway keeps them: one per TEXT it sent, moved on by the hub's frames.

A task's id is the `message_id` of its TEXT, and its `contextId` the TEXT's `conversation_id`,
so every frame the hub sends about the TEXT (its status echoes, the reply's chunks, the final
REPLY or ERROR, an agent's SYSTEM notice) names the task it moves on. The hub already gives
each accepted TEXT exactly one final answer and its chunks in order; a task only translates.

| hub frame                          | task                                              |
|------------------------------------|---------------------------------------------------|
| TEXT echo `pending`                | `submitted`                                       |
| TEXT echo `routed` / `delivered`   | `working`                                         |
| REPLY_CHUNK                        | artifact update (append), in `seq` order          |
| SYSTEM                             | `working`, with the notice as status message      |
| REPLY                              | `completed`, the reply as the artifact            |
| ERROR `cancelled`                  | `canceled`                                        |
| ERROR (any other code)             | `failed`; the code in the status message's and   |
|                                    | the task's metadata as `error_code`               |
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from a2a.types import (
    Artifact,
    Message,
    Part,
    Role,
    Task,
    TaskArtifactUpdateEvent,
    TaskState,
    TaskStatus,
    TaskStatusUpdateEvent,
)

from agentcomm.protocol.ids import new_message_id
from agentcomm.protocol.vocabulary import ErrorCode

log = logging.getLogger(__name__)

Event = Task | TaskStatusUpdateEvent | TaskArtifactUpdateEvent

TERMINAL_STATES = frozenset(
    {
        TaskState.TASK_STATE_COMPLETED,
        TaskState.TASK_STATE_FAILED,
        TaskState.TASK_STATE_CANCELED,
        TaskState.TASK_STATE_REJECTED,
    }
)
# Finished tasks kept for GetTask, the oldest forgotten first; tasks under way are kept until
# they end (the hub ends every accepted TEXT, at the latest after ANSWER_TIMEOUT).
TASKS_KEPT = 1000
# Events a stream's reader may fall behind by; past that its stream ends with the task as it
# is then (GetTask and SubscribeToTask give the rest), so a reader that stops cannot make the
# hub hold a reply twice over.
EVENTS_BEHIND = 1024
# Readers of one task at a time (SendStreamingMessage and SubscribeToTask together).
READERS_PER_TASK = 16
# The one artifact of a task: the agent's reply.
REPLY_ARTIFACT = "reply"


class TooManyReaders(Exception):
    """A task already has READERS_PER_TASK streams open."""


class _Reader:
    """One stream's events of one task, bounded (EVENTS_BEHIND)."""

    def __init__(self) -> None:
        self.events: deque[Event] = deque()
        self.wake = asyncio.Event()
        self.overflowed = False

    def put(self, event: Event) -> None:
        if self.overflowed:
            return
        if len(self.events) >= EVENTS_BEHIND:
            self.overflowed = True
            self.events.clear()
        else:
            self.events.append(event)
        self.wake.set()


@dataclass
class TaskRecord:
    """One A2A task: a TEXT the gateway sent to `agent_id` for the caller `owner`."""

    task_id: str
    context_id: str
    agent_id: str
    owner: str
    request: Message
    state: TaskState = TaskState.TASK_STATE_SUBMITTED
    chunks: list[str] = field(default_factory=list)
    reply: str | None = None
    notice: str | None = None
    error_code: str | None = None
    error_text: str | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    _readers: list[_Reader] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL_STATES

    # -- what the hub's frames do ----------------------------------------------------------

    def echoed(self, routing_status: str, error_code: str | None, text: str | None) -> None:
        if routing_status in ("routed", "delivered"):
            self._set_state(TaskState.TASK_STATE_WORKING)
        elif routing_status == "error":
            # The ERROR that follows the echo ends the task; the echo alone says why early.
            self.error_code = error_code or self.error_code
            self.error_text = text or self.error_text

    def chunk(self, delta: str) -> None:
        if self.finished:
            return
        if self.state is not TaskState.TASK_STATE_WORKING:
            self._set_state(TaskState.TASK_STATE_WORKING)
        self.chunks.append(delta)
        if self._readers:
            self._emit(
                TaskArtifactUpdateEvent(
                    task_id=self.task_id,
                    context_id=self.context_id,
                    artifact=Artifact(artifact_id=REPLY_ARTIFACT, parts=[Part(text=delta)]),
                    append=len(self.chunks) > 1,
                )
            )

    def noticed(self, text: str) -> None:
        if self.finished:
            return
        self.notice = text
        self.state = TaskState.TASK_STATE_WORKING
        if self._readers:
            self._emit(self._status_event())

    def replied(self, text: str) -> None:
        if self.finished:
            return
        self.reply = text
        if not self.chunks and self._readers:
            # Not streamed: the whole reply is the artifact's one update.
            self._emit(
                TaskArtifactUpdateEvent(
                    task_id=self.task_id,
                    context_id=self.context_id,
                    artifact=Artifact(artifact_id=REPLY_ARTIFACT, parts=[Part(text=text)]),
                    last_chunk=True,
                )
            )
        self._finish(TaskState.TASK_STATE_COMPLETED)

    def failed(self, error_code: str | None, text: str | None) -> None:
        if self.finished:
            return
        self.error_code = error_code or self.error_code or ErrorCode.INTERNAL.value
        self.error_text = text or self.error_text or "The hub answered with an error."
        if self.error_code == ErrorCode.CANCELLED.value:
            self._finish(TaskState.TASK_STATE_CANCELED)
        else:
            self._finish(TaskState.TASK_STATE_FAILED)

    # -- what readers see ------------------------------------------------------------------

    def snapshot(self, history_length: int | None = None) -> Task:
        task = Task(
            id=self.task_id,
            context_id=self.context_id,
            status=self._status(),
            metadata=self._metadata(),
        )
        text = self.reply if self.reply is not None else "".join(self.chunks)
        if text or self.reply is not None:
            task.artifacts.append(Artifact(artifact_id=REPLY_ARTIFACT, parts=[Part(text=text)]))
        if history_length:
            # Asked for: the history is the caller's own message, which it has already.
            task.history.append(self.request)
        return task

    async def events(self) -> AsyncIterator[Event]:
        """The task as it is now, then each event until the task ends."""
        if len(self._readers) >= READERS_PER_TASK:
            raise TooManyReaders
        reader = _Reader()
        self._readers.append(reader)
        try:
            # Whether the task had ended when it was shown: if not, its end is among the
            # events, which may all have arrived before the reader comes back for them.
            ended = self.finished
            yield self.snapshot()
            if ended:
                return
            while True:
                await reader.wake.wait()
                reader.wake.clear()
                if reader.overflowed:
                    log.info("A reader of task %s fell behind; its stream ends", self.task_id)
                    yield self.snapshot()
                    return
                while reader.events:
                    event = reader.events.popleft()
                    yield event
                    if isinstance(event, TaskStatusUpdateEvent) and event.status.state in (
                        TERMINAL_STATES
                    ):
                        return
        finally:
            self._readers.remove(reader)

    # -- inside ------------------------------------------------------------------------------

    def _set_state(self, state: TaskState) -> None:
        if self.state == state or self.finished:
            return
        self.state = state
        if self._readers:
            self._emit(self._status_event())

    def _finish(self, state: TaskState) -> None:
        self.state = state
        if self._readers:
            self._emit(self._status_event())
        self.done.set()

    def _status_event(self) -> TaskStatusUpdateEvent:
        return TaskStatusUpdateEvent(
            task_id=self.task_id,
            context_id=self.context_id,
            status=self._status(),
            metadata=self._metadata(),
        )

    def _status(self) -> TaskStatus:
        status = TaskStatus(state=self.state)
        text: str | None = None
        metadata: dict[str, Any] = {}
        if self.state in (TaskState.TASK_STATE_FAILED, TaskState.TASK_STATE_CANCELED):
            text = self.error_text
            metadata = {"error_code": self.error_code}
        elif self.state is TaskState.TASK_STATE_COMPLETED:
            text = None  # the reply is the artifact
        elif self.notice is not None:
            text = self.notice
        if text is not None:
            status.message.CopyFrom(
                Message(
                    message_id=new_message_id(),
                    role=Role.ROLE_AGENT,
                    task_id=self.task_id,
                    context_id=self.context_id,
                    parts=[Part(text=text)],
                    metadata=metadata or None,
                )
            )
        return status

    def _metadata(self) -> dict[str, Any]:
        metadata: dict[str, Any] = {"agent_id": self.agent_id}
        if self.error_code is not None and self.finished:
            metadata["error_code"] = self.error_code
        return metadata

    def _emit(self, event: Event) -> None:
        # Callers build an event only when someone reads it: a SendMessage waits for the end.
        for reader in self._readers:
            reader.put(event)


class TaskBook:
    """Every task of one gateway: those under way, and the newest TASKS_KEPT finished ones."""

    def __init__(self, kept: int = TASKS_KEPT) -> None:
        self._kept = kept
        self._open: dict[str, TaskRecord] = {}
        self._finished: OrderedDict[str, TaskRecord] = OrderedDict()

    def open(self, record: TaskRecord) -> None:
        self._open[record.task_id] = record

    def forget(self, task_id: str) -> None:
        """A task whose TEXT the hub did not accept."""
        self._open.pop(task_id, None)

    def refused(self, record: TaskRecord, error_code: str, text: str) -> None:
        """A task the gateway answers itself, without sending a TEXT (an offline agent)."""
        record.failed(error_code, text)
        self._close(record)

    def get(self, task_id: str, owner: str) -> TaskRecord | None:
        """The task, if `owner` started it: another caller's task is, to them, no task."""
        record = self._open.get(task_id) or self._finished.get(task_id)
        return record if record is not None and record.owner == owner else None

    def under_way(self) -> int:
        return len(self._open)

    def frame(self, data: dict[str, Any]) -> None:
        """A frame the hub sent the gateway's session (already parsed)."""
        kind = data.get("message_type")
        if kind == "TEXT":
            record = self._open.get(str(data.get("message_id")))
            if record is not None:
                reason = data.get("routing_status_message")
                record.echoed(
                    str(data.get("routing_status")),
                    data.get("error_code"),
                    None if reason is None else str(reason),
                )
            return
        record = self._open.get(str(data.get("in_reply_to_message_id")))
        if record is None:
            return  # about a task already finished (a late chunk), or presence
        if kind == "REPLY_CHUNK":
            record.chunk(str(data.get("text_delta") or ""))
        elif kind == "REPLY":
            record.replied(str(data.get("text_payload") or ""))
        elif kind == "ERROR":
            record.failed(data.get("error_code"), data.get("text_payload"))
        elif kind == "SYSTEM":
            record.noticed(str(data.get("text_payload") or ""))
        if record.finished:
            self._close(record)

    def _close(self, record: TaskRecord) -> None:
        self._open.pop(record.task_id, None)
        self._finished[record.task_id] = record
        while len(self._finished) > self._kept:
            self._finished.popitem(last=False)
