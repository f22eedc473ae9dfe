"""One hub message as one call to an outside A2A agent (a2a-sdk's client), for the bridge.

What comes back becomes the agent's answer on the hub:

| remote                                  | hub                                          |
|-----------------------------------------|----------------------------------------------|
| Message, or task `completed`            | REPLY (its text: artifacts, else the status) |
| artifact updates (streaming card)       | a REPLY_CHUNK each, then the REPLY           |
| task `failed`, `rejected`, or asking    | ERROR `remote_failed` with the remote's words |
| for input or auth; a JSON-RPC error     |                                              |
| task `canceled`                         | ERROR `cancelled`                            |
| not reachable, no answer in time        | ERROR `remote_unavailable` (and the bridge   |
|                                         | checks at once whether the remote is gone)   |

A CANCEL for the message cancels the handler; the remote task is then sent CancelTask.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Iterator

import httpx
from a2a.client import Client
from a2a.client.errors import A2AClientError, A2AClientTimeoutError
from a2a.types import (
    CancelTaskRequest,
    GetTaskRequest,
    Message,
    Part,
    Role,
    SendMessageRequest,
    StreamResponse,
    Task,
    TaskState,
)
from a2a.utils.errors import A2AError

from agentcomm.protocol.ids import new_message_id
from agentcomm.protocol.vocabulary import ErrorCode
from agentcomm.sdk import ErrorAnswer
from agentcomm.sdk import Message as HubMessage

log = logging.getLogger(__name__)

_DONE = frozenset(
    {
        TaskState.TASK_STATE_COMPLETED,
        TaskState.TASK_STATE_FAILED,
        TaskState.TASK_STATE_CANCELED,
        TaskState.TASK_STATE_REJECTED,
        TaskState.TASK_STATE_INPUT_REQUIRED,
        TaskState.TASK_STATE_AUTH_REQUIRED,
    }
)
# Polling a task a non-streaming remote is working on: from this, doubling, up to the second.
POLL_FIRST_SECONDS = 0.02
POLL_MAX_SECONDS = 0.5
CANCEL_TIMEOUT_SECONDS = 5.0


def _texts(parts: Iterable[Part]) -> str:
    return "".join(part.text for part in parts if part.WhichOneof("content") == "text")


def _answer_of(task: Task) -> str:
    """The text of a completed task; raises ErrorAnswer for any other end."""
    state = task.status.state
    said = _texts(task.status.message.parts)
    if state == TaskState.TASK_STATE_COMPLETED:
        produced = "".join(_texts(artifact.parts) for artifact in task.artifacts)
        return produced or said
    if state == TaskState.TASK_STATE_CANCELED:
        raise ErrorAnswer(ErrorCode.CANCELLED, said or "The remote agent canceled the task.")
    name = TaskState.Name(state).removeprefix("TASK_STATE_").lower().replace("_", "-")
    if state in (TaskState.TASK_STATE_INPUT_REQUIRED, TaskState.TASK_STATE_AUTH_REQUIRED):
        raise ErrorAnswer(
            ErrorCode.REMOTE_FAILED,
            f"The remote agent stopped at {name}, which the bridge does not pass on"
            + (f": {said}" if said else "."),
        )
    raise ErrorAnswer(
        ErrorCode.REMOTE_FAILED,
        f"The remote agent ended the task {name}" + (f": {said}" if said else "."),
    )


class RemoteCalls:
    """The bridged agent's message handlers: `reply` for a remote that does not stream,
    `stream` for one whose card says it does."""

    def __init__(self, client: Client, *, on_unreachable: Callable[[], None]) -> None:
        self._client = client
        self._on_unreachable = on_unreachable

    async def reply(self, message: HubMessage) -> str:
        request = _request(message)
        # Started, not awaited to its end, so that a CANCEL knows the remote task to cancel.
        request.configuration.return_immediately = True
        task_id = ""
        with self._failures():
            first = await _first(self._client.send_message(request))
            if first.HasField("message"):
                return _texts(first.message.parts)
            task = first.task
            task_id = task.id
            try:
                delay = POLL_FIRST_SECONDS
                while task.status.state not in _DONE:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, POLL_MAX_SECONDS)
                    task = await self._client.get_task(GetTaskRequest(id=task_id))
            except asyncio.CancelledError:
                await self._cancel(task_id)
                raise
            return _answer_of(task)

    async def stream(self, message: HubMessage) -> AsyncIterator[str]:
        task_id = ""
        said_anything = False
        with self._failures():
            try:
                async for event in self._client.send_message(_request(message)):
                    if event.HasField("message"):
                        yield _texts(event.message.parts)
                        return
                    if event.HasField("task"):
                        task_id = event.task.id
                        if event.task.status.state in _DONE:
                            text = _answer_of(event.task)
                            if not said_anything:
                                yield text
                            return
                    elif event.HasField("artifact_update"):
                        task_id = task_id or event.artifact_update.task_id
                        text = _texts(event.artifact_update.artifact.parts)
                        said_anything = said_anything or bool(text)
                        yield text
                    elif event.HasField("status_update"):
                        task_id = task_id or event.status_update.task_id
                        if event.status_update.status.state in _DONE:
                            task = Task(id=task_id, status=event.status_update.status)
                            text = _answer_of(task)
                            if not said_anything:
                                yield text
                            return
            except asyncio.CancelledError:
                if task_id:
                    await self._cancel(task_id)
                raise
        raise ErrorAnswer(
            ErrorCode.REMOTE_FAILED, "The remote agent's stream ended before the task did."
        )

    async def _cancel(self, task_id: str) -> None:
        try:
            async with asyncio.timeout(CANCEL_TIMEOUT_SECONDS):
                await self._client.cancel_task(CancelTaskRequest(id=task_id))
        except (A2AError, TimeoutError) as exc:
            log.info("CancelTask of remote task %s: %s", task_id, exc)

    @contextlib.contextmanager
    def _failures(self) -> Iterator[None]:
        """The remote's errors as the hub's: not reachable, or refused in its own words."""
        try:
            yield
        except ErrorAnswer:
            raise
        except A2AClientTimeoutError:
            raise ErrorAnswer(
                ErrorCode.REMOTE_UNAVAILABLE, "The remote agent did not answer in time."
            ) from None
        except A2AClientError as exc:
            if isinstance(exc.__cause__, httpx.TransportError | httpx.HTTPStatusError):
                self._on_unreachable()
                raise ErrorAnswer(
                    ErrorCode.REMOTE_UNAVAILABLE, f"The remote agent cannot be reached: {exc}"
                ) from None
            raise ErrorAnswer(ErrorCode.REMOTE_FAILED, f"The remote agent refused: {exc}") from None
        except A2AError as exc:
            raise ErrorAnswer(
                ErrorCode.REMOTE_FAILED, f"The remote agent refused: {exc.message}"
            ) from None


def _request(message: HubMessage) -> SendMessageRequest:
    return SendMessageRequest(
        message=Message(
            message_id=new_message_id(),
            role=Role.ROLE_USER,
            # The hub's conversation is the remote's context, so that it too can keep one.
            context_id=message.conversation_id or "",
            parts=[Part(text=message.text)],
        )
    )


async def _first(events: AsyncIterator[StreamResponse]) -> StreamResponse:
    try:
        async for event in events:
            return event
    finally:
        if isinstance(events, AsyncGenerator):
            await events.aclose()
    raise ErrorAnswer(ErrorCode.REMOTE_FAILED, "The remote agent answered nothing.")
