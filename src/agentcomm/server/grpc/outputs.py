"""SendOutputs: an agent's replies and acknowledgements on one long-lived stream.

Each item does what a SendMessage call, an AckMessage call, or the two in that order would do,
with the same checks and the same outcomes, reported as an AgentOutputResult instead of a call's
status. Refusing an item touches nothing else on the stream; the stream itself ends with a
status only when the caller may not use it at all (no or a bad token, another agent's id, a
request that does not parse).

Items are handled concurrently, as the unary calls they replace would be: the agent waits for
one chunk's result before it sends the next, which keeps a streamed reply in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, AsyncIterator

import grpc

from agentcomm.bus.base import BusError
from agentcomm.core.auth import Principal, Role
from agentcomm.generated import agent_registration_service_pb2 as pb
from agentcomm.protocol.codec import decode_envelope
from agentcomm.protocol.errors import ProtocolError
from agentcomm.protocol.ids import is_valid_id
from agentcomm.server.grpc.context import Context, acting_session, ownership_refusal
from agentcomm.server.grpc.parts import GrpcParts

log = logging.getLogger(__name__)

# Items of one stream taken and not yet answered on it: being published, or their results
# waiting to be written. The stream is not read further until one's result is written, so that
# an agent cannot make the server hold an unbounded amount of work, nor of results by not
# reading them.
MAX_ITEMS_IN_FLIGHT = 256

# How long the results wait for those of other items in flight before they are written. The
# answers those items carry are published already; only the agent's bookkeeping waits.
RESULTS_LINGER = 0.002

Refusal = tuple[grpc.StatusCode, str]


class StreamRefused(Exception):
    """The caller may not use this stream any more; it ends with this status."""

    def __init__(self, code: grpc.StatusCode, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def _refused(ref: int, refusal: Refusal) -> pb.AgentOutputResult:
    code, detail = refusal
    return pb.AgentOutputResult(ref=ref, code=code.value[0], detail=detail)


class AgentOutputStream:
    """One SendOutputs call: items in, results out (batched as they become known)."""

    def __init__(self, parts: GrpcParts, context: Context, principal: Principal | None) -> None:
        self._parts = parts
        self._principal = principal
        self._session = acting_session(context, parts.auth)
        self._agent_id = ""
        # None marks the end: every item was answered.
        self._results: asyncio.Queue[pb.AgentOutputResult | None] = asyncio.Queue()
        self._working: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(MAX_ITEMS_IN_FLIGHT)
        self._refused_items = 0
        # Items taken and not answered yet.
        self._unanswered = 0

    async def serve(
        self, requests: AsyncIterable[pb.AgentOutputs]
    ) -> AsyncIterator[pb.AgentOutputResults]:
        reader = asyncio.create_task(self._read(requests), name="grpc-send-outputs-reader")
        try:
            done = False
            while not done:
                batch = [await self._results.get()]
                if self._unanswered:
                    # Other items are under way: a moment's wait lets their results share
                    # the write.
                    await asyncio.sleep(RESULTS_LINGER)
                # Whatever else is known by now goes out in the same write.
                while not self._results.empty():
                    batch.append(self._results.get_nowait())
                done = batch[-1] is None
                results = [result for result in batch if result is not None]
                if results:
                    yield pb.AgentOutputResults(results=results)
                    # Written (or at least taken by the transport, which holds only what the
                    # agent's flow control allows): the items' slots are free for the next.
                    for _ in results:
                        self._slots.release()
        finally:
            # Also when the agent went away: its items in flight end like unary calls whose
            # caller left.
            reader.cancel()
            for task in list(self._working):
                task.cancel()
            await asyncio.gather(reader, *self._working, return_exceptions=True)
            if self._refused_items:
                log.info(
                    "SendOutputs of agent %s: %d items refused",
                    self._agent_id or "?",
                    self._refused_items,
                )
        # The reader ended the results; what made it stop, if anything, ends the call.
        failure = reader.exception()
        if failure is not None:
            raise failure

    async def _read(self, requests: AsyncIterable[pb.AgentOutputs]) -> None:
        try:
            async for outputs in requests:
                refusal = self._check(outputs.agent_id)
                for item in outputs.items:
                    await self._take(item, refusal)
        finally:
            # The items already taken are answered before the stream ends, also when it ends
            # with a refusal.
            if self._working:
                await asyncio.wait(set(self._working))
            self._results.put_nowait(None)

    def _check(self, agent_id: str) -> Refusal | None:
        """Ends the stream for an agent the caller may not speak for; returns why the items of
        this request are refused, if they are (the agent is unknown or someone else's now)."""
        if not self._agent_id:
            if not agent_id or not is_valid_id(agent_id):
                raise StreamRefused(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "agent_id must be 1-128 characters from [A-Za-z0-9_.:-].",
                )
            if self._principal is not None and not self._principal.may_act_as(Role.AGENT, agent_id):
                raise StreamRefused(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"A {self._principal.role.value} token for {self._principal.subject!r} may "
                    f"not act as {agent_id!r}.",
                )
            self._agent_id = agent_id
        elif agent_id and agent_id != self._agent_id:
            raise StreamRefused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"This stream speaks for agent {self._agent_id}; open another for {agent_id}.",
            )
        return ownership_refusal(self._parts.registry, self._agent_id, self._session)

    async def _take(self, item: pb.AgentOutput, refusal: Refusal | None) -> None:
        # Every item holds a slot until its result was written, also one answered at once: an
        # agent that writes items and never reads results stops being read instead.
        await self._slots.acquire()
        self._unanswered += 1
        if refusal is None and not item.envelope_json and not item.ack_message_id:
            refusal = (
                grpc.StatusCode.INVALID_ARGUMENT,
                "An item carries an envelope, an ack_message_id, or both.",
            )
        if refusal is not None:
            self._answer(_refused(item.ref, refusal))
            return
        if not item.envelope_json:
            # An ack alone needs no waiting, so it needs no task either.
            self._answer(self._acknowledge(item, pb.AgentOutputResult(ref=item.ref)))
            return
        task = asyncio.create_task(self._publish(item), name=f"grpc-output-{item.ref}")
        self._working.add(task)
        task.add_done_callback(self._working.discard)

    async def _publish(self, item: pb.AgentOutput) -> None:
        limit = self._parts.settings.max_message_bytes
        if len(item.envelope_json) > limit:
            refusal = (
                grpc.StatusCode.INVALID_ARGUMENT,
                f"The message is larger than {limit} bytes.",
            )
            self._answer(_refused(item.ref, refusal))
            return
        try:
            message = decode_envelope(item.envelope_json)
            published = await self._parts.router.accept_from_agent(
                self._agent_id, message, traceparent=item.traceparent
            )
        except ProtocolError as exc:
            self._answer(_refused(item.ref, (grpc.StatusCode.INVALID_ARGUMENT, exc.text)))
            return
        except BusError as exc:
            unavailable = (grpc.StatusCode.UNAVAILABLE, f"Message bus unavailable: {exc}")
            self._answer(_refused(item.ref, unavailable))
            return
        except Exception:
            log.exception("SendOutputs of agent %s failed on item %d", self._agent_id, item.ref)
            internal = (grpc.StatusCode.INTERNAL, "The server failed on this item.")
            self._answer(_refused(item.ref, internal))
            return
        result = pb.AgentOutputResult(ref=item.ref, accepted=True, message_id=published.message_id)
        # Only now: the message must not leave the queue before its answer is on its way.
        self._answer(self._acknowledge(item, result) if item.ack_message_id else result)

    def _acknowledge(
        self, item: pb.AgentOutput, result: pb.AgentOutputResult
    ) -> pb.AgentOutputResult:
        refusal: Refusal | None = None
        inbox = self._parts.inboxes.get(self._agent_id)
        if not is_valid_id(item.ack_message_id):
            refusal = (
                grpc.StatusCode.INVALID_ARGUMENT,
                "ack_message_id must be 1-128 characters from [A-Za-z0-9_.:-].",
            )
        elif inbox is None:
            refusal = (
                grpc.StatusCode.FAILED_PRECONDITION,
                f"Agent {self._agent_id} has no open ReceiveMessages stream.",
            )
        elif not inbox.acknowledge(item.ack_message_id, item.handled):
            refusal = (
                grpc.StatusCode.NOT_FOUND,
                f"Message {item.ack_message_id} is not awaiting an acknowledgement.",
            )
        if refusal is not None:
            # What was published stays said: only the ack failed.
            result.code, result.detail = refusal[0].value[0], refusal[1]
            return result
        result.acknowledged = True
        return result

    def _answer(self, result: pb.AgentOutputResult) -> None:
        self._unanswered -= 1
        if result.code:
            # Once per stream in the log; the agent gets every refusal in its result.
            if not self._refused_items:
                log.warning(
                    "SendOutputs of agent %s refused item %d: %s",
                    self._agent_id or "?",
                    result.ref,
                    result.detail,
                )
            self._refused_items += 1
        self._results.put_nowait(result)


async def serve_outputs(
    parts: GrpcParts,
    requests: AsyncIterable[pb.AgentOutputs],
    context: Context,
    principal: Principal | None,
) -> AsyncIterator[pb.AgentOutputResults]:
    """The SendOutputs call: `principal` was authorized to act as an agent."""
    stream = AgentOutputStream(parts, context, principal)
    try:
        async for results in stream.serve(requests):
            yield results
    except StreamRefused as refused:
        await context.abort(refused.code, refused.detail)
