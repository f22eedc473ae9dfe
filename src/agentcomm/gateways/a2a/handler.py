"""The A2A methods on a hub agent (a2a-sdk's RequestHandler): each becomes hub frames.

a2a-sdk parses the JSON-RPC (both spec versions), answers malformed requests and unknown
methods, and writes the SSE; this handler only maps. Which agent and which caller a call is
for come from the route (`routes.py`) in the call context's state.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator

from a2a.server.context import ServerCallContext
from a2a.server.request_handlers.request_handler import RequestHandler
from a2a.types import (
    AgentCard,
    CancelTaskRequest,
    DeleteTaskPushNotificationConfigRequest,
    GetExtendedAgentCardRequest,
    GetTaskPushNotificationConfigRequest,
    GetTaskRequest,
    ListTaskPushNotificationConfigsRequest,
    ListTaskPushNotificationConfigsResponse,
    ListTasksRequest,
    ListTasksResponse,
    Message,
    SendMessageRequest,
    SubscribeToTaskRequest,
    Task,
    TaskPushNotificationConfig,
)
from a2a.utils.errors import (
    ContentTypeNotSupportedError,
    InvalidParamsError,
    InvalidRequestError,
    PushNotificationNotSupportedError,
    TaskNotCancelableError,
    TaskNotFoundError,
    UnsupportedOperationError,
)
from google.protobuf.json_format import MessageToJson
from pydantic import ValidationError

from agentcomm.gateways.a2a.gateway import A2AGateway
from agentcomm.gateways.a2a.tasks import Event, TaskRecord, TooManyReaders
from agentcomm.protocol.errors import ProtocolError
from agentcomm.protocol.ids import new_message_id
from agentcomm.protocol.vocabulary import ErrorCode

log = logging.getLogger(__name__)

# Keys of the call context's state, set by the route.
AGENT_ID = "agentcomm_agent_id"
CALLER = "agentcomm_caller"
# How long CancelTask waits for the agent's final answer before it answers with the task as
# it is then (still `working`; GetTask shows the end).
CANCEL_WAIT_SECONDS = 5.0
MAX_CONTEXT_ID_CHARS = 128


class HubRequestHandler(RequestHandler):
    def __init__(self, gateway: A2AGateway) -> None:
        self._gateway = gateway

    # -- messages ----------------------------------------------------------------------------

    async def on_message_send(
        self, params: SendMessageRequest, context: ServerCallContext
    ) -> Task | Message:
        record = await self._start(params, context)
        history = _history_length(params)
        if not params.configuration.return_immediately:
            await record.done.wait()
        return record.snapshot(history)

    async def on_message_send_stream(
        self, params: SendMessageRequest, context: ServerCallContext
    ) -> AsyncGenerator[Event]:
        record = await self._start(params, context)
        async for event in _events(record):
            yield event

    # -- tasks -------------------------------------------------------------------------------

    async def on_get_task(self, params: GetTaskRequest, context: ServerCallContext) -> Task | None:
        record = self._record(params.id, context)
        history = params.history_length if params.HasField("history_length") else None
        return record.snapshot(history)

    async def on_cancel_task(
        self, params: CancelTaskRequest, context: ServerCallContext
    ) -> Task | None:
        record = self._record(params.id, context)
        if record.finished:
            raise TaskNotCancelableError(
                message=f"Task {record.task_id} has already ended ({record.state})."
            )
        try:
            await self._gateway.cancel(record)
        except ProtocolError as exc:
            # The hub answered the TEXT between our look and the CANCEL.
            log.info("CancelTask of %s refused: %s", record.task_id, exc.text)
        try:
            async with asyncio.timeout(CANCEL_WAIT_SECONDS):
                await record.done.wait()
        except TimeoutError:
            log.info(
                "Task %s had no final answer within %g s of its CancelTask",
                record.task_id,
                CANCEL_WAIT_SECONDS,
            )
        return record.snapshot()

    async def on_subscribe_to_task(
        self, params: SubscribeToTaskRequest, context: ServerCallContext
    ) -> AsyncGenerator[Event]:
        record = self._record(params.id, context)
        if record.finished:
            raise UnsupportedOperationError(
                message=f"Task {record.task_id} has ended; GetTask gives its result."
            )
        async for event in _events(record):
            yield event

    async def on_list_tasks(
        self, params: ListTasksRequest, context: ServerCallContext
    ) -> ListTasksResponse:
        raise UnsupportedOperationError(message="ListTasks is not offered; use GetTask.")

    # -- what the hub does not offer -----------------------------------------------------------

    async def on_create_task_push_notification_config(
        self, params: TaskPushNotificationConfig, context: ServerCallContext
    ) -> TaskPushNotificationConfig:
        raise PushNotificationNotSupportedError

    async def on_get_task_push_notification_config(
        self, params: GetTaskPushNotificationConfigRequest, context: ServerCallContext
    ) -> TaskPushNotificationConfig:
        raise PushNotificationNotSupportedError

    async def on_list_task_push_notification_configs(
        self, params: ListTaskPushNotificationConfigsRequest, context: ServerCallContext
    ) -> ListTaskPushNotificationConfigsResponse:
        raise PushNotificationNotSupportedError

    async def on_delete_task_push_notification_config(
        self, params: DeleteTaskPushNotificationConfigRequest, context: ServerCallContext
    ) -> None:
        raise PushNotificationNotSupportedError

    async def on_get_extended_agent_card(
        self, params: GetExtendedAgentCardRequest, context: ServerCallContext
    ) -> AgentCard:
        raise UnsupportedOperationError(message="There is no extended agent card.")

    # -- inside ------------------------------------------------------------------------------

    def _record(self, task_id: str, context: ServerCallContext) -> TaskRecord:
        record = self._gateway.book.get(task_id, str(context.state.get(CALLER, "")))
        if record is None or record.agent_id != context.state.get(AGENT_ID, ""):
            raise TaskNotFoundError(message=f"No task {task_id!r} of yours at this address.")
        return record

    async def _start(self, params: SendMessageRequest, context: ServerCallContext) -> TaskRecord:
        message = params.message
        if message.task_id:
            raise UnsupportedOperationError(
                message="Every message starts a task of its own here: send it without taskId, "
                "with the same contextId to go on with the conversation."
            )
        text = _text_of(message)
        limit = self._gateway.parts.settings.max_message_bytes
        if len(text.encode()) > limit:
            # What a WebSocket frame may carry, so that no agent gets more than it takes.
            raise InvalidParamsError(
                message=f"The text may have at most {limit} bytes (MAX_MESSAGE_BYTES).",
                data={"error_code": ErrorCode.TOO_LARGE.value},
            )
        context_id = message.context_id or new_message_id()
        if len(context_id) > MAX_CONTEXT_ID_CHARS:
            raise InvalidParamsError(
                message=f"contextId may have at most {MAX_CONTEXT_ID_CHARS} characters."
            )
        agent_id = str(context.state.get(AGENT_ID, ""))
        record = TaskRecord(
            task_id=new_message_id(),
            context_id=context_id,
            agent_id=agent_id,
            owner=str(context.state.get(CALLER, "")),
            request=_as_request(message, context_id),
        )
        record.request.task_id = record.task_id
        if agent_id:
            info = self._gateway.parts.agents.info(agent_id)
            if info is None:
                # a2a-sdk maps errors to codes by their exact class: no subclass of our own.
                raise InvalidRequestError(
                    message=f"There is no agent {agent_id!r} on this hub; GET /a2a lists them.",
                    data={"error_code": ErrorCode.UNKNOWN_RECEIVER.value, "agent_id": agent_id},
                )
            if not info.is_online:
                # Answered here: nothing was sent, so no broker needs to be running to say so.
                self._gateway.book.refused(
                    record,
                    ErrorCode.AGENT_OFFLINE.value,
                    f"Agent {agent_id} is offline; try again when it is back.",
                )
                return record
        try:
            await self._gateway.send(record, text)
        except ProtocolError as exc:
            raise InvalidParamsError(
                message=exc.text, data={"error_code": exc.code.value}
            ) from None
        except ValidationError as exc:
            # An envelope the wire contract does not take (a text past its bound).
            raise InvalidParamsError(
                message=f"The message does not fit a hub message: {exc.errors()[0]['msg']}",
                data={"error_code": ErrorCode.INVALID_MESSAGE.value},
            ) from None
        return record


async def _events(record: TaskRecord) -> AsyncGenerator[Event]:
    try:
        async for event in record.events():
            yield event
    except TooManyReaders:
        raise UnsupportedOperationError(
            message=f"Task {record.task_id} has as many streams open as it may have."
        ) from None


def _history_length(params: SendMessageRequest) -> int | None:
    configuration = params.configuration
    return configuration.history_length if configuration.HasField("history_length") else None


def _text_of(message: Message) -> str:
    """The text a message's parts make: text parts as they are, data parts as JSON."""
    pieces: list[str] = []
    for part in message.parts:
        kind = part.WhichOneof("content")
        if kind == "text":
            pieces.append(part.text)
        elif kind == "data":
            pieces.append(MessageToJson(part.data, indent=None))
        else:
            raise ContentTypeNotSupportedError(
                message="Hub agents take text (and data, as JSON text); files are not passed on."
            )
    text = "\n".join(pieces)
    if not text.strip():
        raise InvalidParamsError(message="The message needs a text part that is not empty.")
    return text


def _as_request(message: Message, context_id: str) -> Message:
    request = Message()
    request.CopyFrom(message)
    request.context_id = context_id
    return request
