"""Carries out the server's routing decisions: publishes on the bus, frames to sessions.

`core.routing.ServerRouter` decides and yields effects; this module is the only place that
turns them into I/O, and turns a failed publish back into the core's terms (`PublishFailed`)
for the decision to go on from. A failure the decision lets through leaves here as the bus's
own error, so that a bus handler does not ack, and a gRPC call answers UNAVAILABLE, as always.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TypeVar

from agentcomm.bus.base import Bus, BusError, BusUnavailable, Unroutable
from agentcomm.core.routing import (
    BusDown,
    Effect,
    Plan,
    Publish,
    PublishFailed,
    QueueMissing,
    SendFrame,
    ServerRouter,
    WaitFor,
)
from agentcomm.core.sessions import FrontendSessions
from agentcomm.protocol.models import Envelope
from agentcomm.protocol.queues import (
    AGENT_QUEUE_PREFIX,
    BROKER_INPUT_QUEUE,
    SERVER_INPUT_QUEUE,
    SERVER_QUEUE_PREFIX,
)
from agentcomm.server.metrics import HubMetrics

log = logging.getLogger(__name__)

T = TypeVar("T")


class RouteRunner:
    """The router's entry points as coroutines, each running its plan to the end."""

    def __init__(
        self,
        router: ServerRouter,
        bus: Bus,
        sessions: FrontendSessions,
        metrics: HubMetrics | None = None,
    ) -> None:
        self.decisions = router
        self._bus = bus
        self._sessions = sessions
        self._metrics = metrics
        # A frame for a frontend's socket (or its resume backlog); traced when tracing is on.
        self.send_frame = sessions.send

    async def accept_from_frontend(
        self, frontend_id: str, message: Envelope, *, received_at: float | None = None
    ) -> None:
        """A TEXT or CANCEL from a registered frontend; raises ProtocolError on bad input.

        `received_at` (event loop time) is when the frame arrived: the sender is answered
        within the publish timeout of that moment, also when frames queued up behind others
        while the bus was slow or down.
        """
        time_left = None
        if received_at is not None:
            elapsed = asyncio.get_running_loop().time() - received_at
            time_left = self.decisions.publish_timeout - elapsed
        await self.run(
            self.decisions.accept_from_frontend(frontend_id, message, time_left=time_left)
        )

    async def accept_from_agent(
        self, agent_id: str, message: Envelope, *, traceparent: str = ""
    ) -> Envelope:
        """An agent's message towards the broker; returns it as published. `traceparent` is
        the agent's trace context (used when tracing is on, `server/tracing.py`)."""
        return await self.run(self.decisions.accept_from_agent(agent_id, message))

    async def handle_broker_output(self, message: Envelope) -> None:
        """A message from `server_input_queue`; raises a BusError when a publish it needs
        failed, so that the bus message comes back later."""
        await self.run(self.decisions.handle_broker_output(message))

    async def release_overdue_streams(self) -> None:
        await self.run(self.decisions.release_overdue_streams())

    async def answer_abandoned(self) -> int:
        return await self.run(self.decisions.answer_abandoned())

    async def answer_overdue(self) -> int:
        return await self.run(self.decisions.answer_overdue())

    async def run(self, plan: Plan[T]) -> T:
        """Carries out each effect `plan` yields, in order, until it returns."""
        # The plan is resumed here and nowhere else: its StopIteration must end this loop,
        # not leave a coroutine (where Python turns it into a RuntimeError).
        try:
            effect: Effect = next(plan)
            while True:
                if type(effect) is SendFrame:
                    self.send_frame(effect.frontend_id, effect.frame)
                    failure = None
                elif type(effect) is Publish:
                    failure = await self._publish(effect)
                elif type(effect) is WaitFor:
                    failure = await _wait(effect)
                else:
                    raise TypeError(f"Unknown routing effect {effect!r}")
                effect = next(plan) if failure is None else _throw(plan, failure)
        except StopIteration as stop:
            result: T = stop.value
            return result

    async def _publish(self, publish: Publish) -> BaseException | None:
        """None once the bus took the message; else what stopped it (a cancellation too: the
        plan lets go of what waits on it, then the cancellation goes on)."""
        started = time.perf_counter()
        try:
            await self._bus.publish(
                publish.queue,
                publish.body,
                message_id=publish.message_id,
                mandatory=publish.mandatory,
                timeout=publish.timeout,
            )
        except BaseException as exc:
            return exc
        if self._metrics is not None:
            self._metrics.publish_timer(queue_label(publish.queue)).observe(
                time.perf_counter() - started
            )
        return None


async def _wait(wait: WaitFor) -> BaseException | None:
    try:
        async with asyncio.timeout(wait.timeout):
            await wait.event
    except TimeoutError:
        log.warning("%s", wait.on_timeout)
    except BaseException as exc:
        return exc
    return None


def _throw(plan: Plan[T], exc: BaseException) -> Effect:
    """Hands a failure to the plan; a bus failure in the core's terms. One the plan lets
    through leaves as it came, the bus's own error."""
    if not isinstance(exc, BusError):
        return plan.throw(exc)
    failure = _as_publish_failure(exc)
    try:
        return plan.throw(failure)
    except PublishFailed as escaped:
        if escaped is failure:
            raise exc from None
        raise


def _as_publish_failure(exc: BusError) -> PublishFailed:
    if isinstance(exc, Unroutable):
        return QueueMissing(str(exc))
    if isinstance(exc, BusUnavailable):
        return BusDown(str(exc))
    return PublishFailed(str(exc))


def queue_label(queue: str) -> str:
    """The bounded label of a queue in the metrics: the fixed queues by name, every agent's
    queue and every hub's queue as one."""
    if queue in (BROKER_INPUT_QUEUE, SERVER_INPUT_QUEUE):
        return queue
    if queue.startswith(AGENT_QUEUE_PREFIX):
        return "agent_queue"
    if queue.startswith(SERVER_QUEUE_PREFIX):
        return "server_queue"
    return "other"
