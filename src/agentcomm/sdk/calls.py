"""Calls from this agent to other agents: ask one and await its answer, or stream it.

A call is a TEXT to another agent, by id or by capability (the broker chooses, among the agents
not already waiting in the call's chain), carrying `metadata.call` (protocol/calls.py): who
asks, the message it answers, and the question at the root of the tree. The answer — its
REPLY_CHUNKs, then one REPLY or ERROR — comes back to this agent's own queue, and the dispatcher
hands it to `Calls.deliver`.

A call ends in exactly one of: the answer's text, a `CallFailed` naming the ERROR's code, or
the asking code's own cancellation. Whenever it ends without its answer (the handler that asked
was cancelled or timed out, the stream was left early, the call's own timeout passed, or the
handler finished with calls still running), a CANCEL goes to the agent asked at once, so that
cancellation runs down the whole tree.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agentcomm.protocol import Envelope, ErrorCode, MessageType, RoutingStatus
from agentcomm.protocol.calls import CALL_KEY, next_call
from agentcomm.protocol.rules import call_refusal, calls_in_flight_refusal
from agentcomm.protocol.timestamps import utc_now_iso
from agentcomm.sdk.errors import AgentError, AnswerTimeout, call_error

log = logging.getLogger(__name__)

Publish = Callable[[Envelope], Awaitable[None]]

# The message whose handler runs in this task (set by the dispatcher): `agent.ask` inside a
# handler belongs to that message's call tree without being told so.
ANSWERING: contextvars.ContextVar[Envelope | None] = contextvars.ContextVar(
    "agentcomm_answering", default=None
)

# As long as the hub waits for an answer to a frontend's TEXT by default (ANSWER_TIMEOUT).
DEFAULT_CALL_TIMEOUT = 600.0
DEFAULT_MAX_CALLS_IN_FLIGHT = 64
REQUIRED_CAPABILITIES_KEY = "required_capabilities"
# What a final REPLY says of the calls made for it (metadata `calls`): enough for a UI to show
# them under the message, bounded so that a handler asking in a loop does not grow its answer.
CALLS_KEY = "calls"
CALLS_LISTED = 16
CALL_TEXT_CHARS = 200


def _parent_key(envelope: Envelope) -> tuple[str, str]:
    return (envelope.sender_id or "", envelope.message_id)


@dataclass(eq=False, slots=True)
class _Call:
    text: Envelope
    # The message whose handler asked (its sender and id); None outside handlers.
    parent: tuple[str, str] | None
    answers: asyncio.Queue[Envelope] = field(default_factory=asyncio.Queue)
    # The agent that answers: the one named, else the first that sent a piece of the answer.
    answered_by: str | None = None
    finished: bool = False
    # How it ended: "answered", an ERROR's code, or "cancelled" (None: not yet).
    outcome: str | None = None
    answer: str = ""
    recorded: bool = False
    started: float = field(default_factory=lambda: asyncio.get_running_loop().time())


class Calls:
    """The calls this agent has under way, by the id of the TEXT that asked."""

    def __init__(
        self,
        publish: Publish,
        agent_id: Callable[[], str | None],
        *,
        limit: int = DEFAULT_MAX_CALLS_IN_FLIGHT,
        timeout: float = DEFAULT_CALL_TIMEOUT,
    ) -> None:
        if limit < 1:
            raise ValueError("max_calls_in_flight must be at least 1.")
        self._publish = publish
        self._agent_id = agent_id
        self.limit = limit
        self.timeout = timeout
        self._calls: dict[str, _Call] = {}
        # The calls made for each message being handled, as its final REPLY lists them.
        self._made: dict[tuple[str, str], list[dict[str, Any]]] = {}
        # CANCELs on their way out: kept so that none is lost unobserved (see _abandon).
        self._cancelling: set[asyncio.Task[None]] = set()

    @property
    def in_flight(self) -> int:
        return sum(1 for call in self._calls.values() if not call.finished)

    # -- asking ----------------------------------------------------------------------------

    async def ask(
        self,
        agent_id: str | None,
        text: str,
        *,
        capability: Mapping[str, str] | None = None,
        answering: Envelope | None = None,
        timeout: float | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        """Sends `text` to `agent_id` (or to an agent with `capability`) and returns its final
        answer; raises a `CallFailed` (AgentOffline, Cancelled, AnswerTimeout, ...) instead."""
        call = await self._start(agent_id, text, capability, answering, metadata)
        try:
            while True:
                answer = await self._next(call, timeout)
                if answer.message_type is not MessageType.REPLY_CHUNK:
                    return self._final(call, answer)
        finally:
            self._end(call)

    async def ask_stream(
        self,
        agent_id: str | None,
        text: str,
        *,
        capability: Mapping[str, str] | None = None,
        answering: Envelope | None = None,
        timeout: float | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> AsyncIterator[str]:
        """As `ask`, yielding the answer's pieces as they come (in order); an answer that was
        not streamed comes as one piece. Each piece starts the timeout again."""
        call = await self._start(agent_id, text, capability, answering, metadata)
        try:
            given: list[str] = []
            held: dict[int, str] = {}
            while True:
                answer = await self._next(call, timeout)
                if answer.message_type is MessageType.REPLY_CHUNK:
                    if answer.seq is not None and answer.seq >= len(given):
                        held[answer.seq] = answer.text_delta or ""
                    # Pieces go out in seq order, whatever order the hops gave them.
                    while len(given) in held:
                        piece = held.pop(len(given))
                        given.append(piece)
                        if piece:
                            yield piece
                    continue
                whole = self._final(call, answer)
                so_far = "".join(given)
                # The final REPLY has the whole text: what the chunks did not bring is the rest.
                rest = whole[len(so_far) :] if whole.startswith(so_far) else ""
                if rest:
                    yield rest
                return
        finally:
            self._end(call)

    # -- answers -------------------------------------------------------------------------------

    def deliver(self, envelope: Envelope) -> bool:
        """Takes an answer to one of this agent's calls; False when it answers none of them."""
        call = self._calls.get(envelope.in_reply_to_message_id or "")
        if call is None or call.finished:
            return False
        if envelope.message_type is MessageType.SYSTEM:
            return True  # notices about the call: nothing to wait for
        if envelope.message_type not in (
            MessageType.REPLY,
            MessageType.REPLY_CHUNK,
            MessageType.ERROR,
        ):
            return False
        if call.answered_by is None and envelope.message_type is not MessageType.ERROR:
            call.answered_by = envelope.sender_id
        call.answers.put_nowait(envelope)
        return True

    def cancel_under(self, answering: Envelope) -> int:
        """Cancels the calls still running that the handler of `answering` made (it finished,
        or was cancelled, with calls left behind); returns how many."""
        key = _parent_key(answering)
        left = [c for c in self._calls.values() if c.parent == key and not c.finished]
        for call in left:
            self._abandon(call)
            self._record(call)
            # Whoever still waits on it learns at once.
            call.answers.put_nowait(
                Envelope(
                    message_type=MessageType.ERROR,
                    in_reply_to_message_id=call.text.message_id,
                    error_code=ErrorCode.CANCELLED.value,
                    text_payload="The message this call was made for is finished.",
                )
            )
        return len(left)

    def made_for(self, answering: Envelope) -> list[dict[str, Any]] | None:
        """Takes the record of the calls made while answering `answering` (None: none)."""
        return self._made.pop(_parent_key(answering), None)

    async def settle(self, timeout: float) -> None:
        """Waits (at most `timeout` s) for the CANCELs on their way out, before the agent's
        transport closes."""
        if self._cancelling:
            await asyncio.wait(set(self._cancelling), timeout=timeout)

    # -- internals -----------------------------------------------------------------------------

    async def _start(
        self,
        agent_id: str | None,
        text: str,
        capability: Mapping[str, str] | None,
        answering: Envelope | None,
        metadata: Mapping[str, Any] | None,
    ) -> _Call:
        me = self._agent_id()
        if not me:
            raise AgentError("The agent is not registered yet: start it before it asks others.")
        if agent_id is None and not capability:
            raise ValueError(
                "Name the agent to ask, or give capability={...} for the broker to choose one."
            )
        if not text.strip():
            raise ValueError("A call needs a non-empty text.")
        if answering is None:
            answering = ANSWERING.get()
        context = next_call(me, answering)
        refusal = call_refusal(me, agent_id, context.chain)
        if refusal is not None:
            code, why = refusal
            raise call_error(code.value, why, agent_id=agent_id)
        too_many = calls_in_flight_refusal(me, self.in_flight, self.limit)
        if too_many is not None:
            raise call_error(ErrorCode.TOO_MANY_CALLS.value, too_many, agent_id=agent_id)
        carried = dict(metadata or {})
        carried[CALL_KEY] = context.to_metadata()
        if capability:
            carried[REQUIRED_CAPABILITIES_KEY] = dict(capability)
        envelope = Envelope(
            message_type=MessageType.TEXT,
            sender_id=me,
            receiver_id=agent_id,
            text_payload=text,
            routing_status=RoutingStatus.PENDING,
            send_timestamp=utc_now_iso(),
            metadata=carried,
            # The hops the broker counts: one per agent waiting, so that its MAX_HOPS bound
            # holds for agents that do not check the chain themselves.
            hops=context.depth,
        )
        call = _Call(envelope, _parent_key(answering) if answering is not None else None)
        call.answered_by = agent_id
        self._calls[envelope.message_id] = call
        try:
            await self._publish(envelope)
        except BaseException:
            call.finished = True
            del self._calls[envelope.message_id]
            raise
        return call

    async def _next(self, call: _Call, timeout: float | None) -> Envelope:
        seconds = self.timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(seconds):
                return await call.answers.get()
        except TimeoutError:
            call.outcome = ErrorCode.ANSWER_TIMEOUT.value
            raise AnswerTimeout(
                ErrorCode.ANSWER_TIMEOUT.value,
                f"No answer from {call.answered_by or 'the agent asked'} within {seconds:g} s; "
                "the call was cancelled.",
                agent_id=call.answered_by,
            ) from None

    def _final(self, call: _Call, answer: Envelope) -> str:
        call.finished = True
        if answer.message_type is MessageType.REPLY:
            call.outcome, call.answer = "answered", answer.text_payload or ""
            return call.answer
        code = answer.error_code or ErrorCode.INTERNAL.value
        words = answer.text_payload or f"The call ended in ERROR {code}."
        call.outcome, call.answer = code, words
        raise call_error(code, words, agent_id=call.answered_by)

    def _end(self, call: _Call) -> None:
        """The asking code is done with `call`: one still running is cancelled."""
        self._calls.pop(call.text.message_id, None)
        if not call.finished:
            self._abandon(call)
        self._record(call)

    def _record(self, call: _Call) -> None:
        if call.parent is None or call.recorded:
            return
        call.recorded = True
        made = self._made.setdefault(call.parent, [])
        if len(made) >= CALLS_LISTED:
            return
        loop = asyncio.get_running_loop()
        made.append(
            {
                "agent_id": call.answered_by,
                "message_id": call.text.message_id,
                "text": (call.text.text_payload or "")[:CALL_TEXT_CHARS],
                "outcome": call.outcome or ErrorCode.CANCELLED.value,
                "answer": call.answer[:CALL_TEXT_CHARS],
                "ms": round((loop.time() - call.started) * 1000, 1),
            }
        )

    def _abandon(self, call: _Call) -> None:
        call.finished = True
        cancel = Envelope(
            message_type=MessageType.CANCEL,
            sender_id=call.text.sender_id,
            # The agent asked, when known; else the broker finds the one it chose.
            receiver_id=call.answered_by,
            in_reply_to_message_id=call.text.message_id,
            routing_status=RoutingStatus.PENDING,
            send_timestamp=utc_now_iso(),
            hops=call.text.hops,
        )
        # Sent from a task of its own: the asking code is being cancelled (or is a generator
        # being closed) and must not wait for the bus; the task is kept and its failure logged.
        task = asyncio.get_running_loop().create_task(self._send_cancel(cancel))
        self._cancelling.add(task)
        task.add_done_callback(self._cancelling.discard)

    async def _send_cancel(self, cancel: Envelope) -> None:
        try:
            await self._publish(cancel)
        except Exception as exc:
            log.warning(
                "Could not cancel call %s to %s: %s",
                cancel.in_reply_to_message_id,
                cancel.receiver_id or "the agent chosen",
                exc,
            )


class AsksOtherAgents:
    """`ask` and `ask_stream` on an Agent (see Calls): inside a handler a call belongs to the
    message being handled; outside handlers it starts a tree of its own."""

    calls: Calls

    async def ask(
        self,
        agent_id: str | None,
        text: str,
        *,
        capability: Mapping[str, str] | None = None,
        timeout: float | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        """Asks `agent_id` (None: an agent with `capability`, chosen by the broker) and returns
        its final answer. Raises AgentOffline, NoAgentAvailable, Cancelled, AnswerTimeout,
        CallRefused or AnswerFailed (all `CallFailed`, with `error_code`)."""
        return await self.calls.ask(
            agent_id, text, capability=capability, timeout=timeout, metadata=metadata
        )

    def ask_stream(
        self,
        agent_id: str | None,
        text: str,
        *,
        capability: Mapping[str, str] | None = None,
        timeout: float | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> AsyncIterator[str]:
        """As `ask`, yielding the answer's pieces as the agent streams them."""
        return self.calls.ask_stream(
            agent_id, text, capability=capability, timeout=timeout, metadata=metadata
        )
