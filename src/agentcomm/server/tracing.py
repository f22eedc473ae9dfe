"""The hub's own spans of a traced chat turn: the frame received, an agent's output taken in,
and each frame handed to a frontend's socket.

`TracedRouteRunner` replaces `RouteRunner` only when tracing is on (`Hub`), so that the hub
without it runs the router as it always did. The bus spans come from the traced bus
(`telemetry/bus.py`); this adds the spans at the hub's edges and makes them current, so that
the publishes a decision asks for nest under the frame that caused them.
"""

from __future__ import annotations

import asyncio

from opentelemetry.context import Context

from agentcomm.bus.base import Bus
from agentcomm.core.routing import ServerRouter
from agentcomm.core.sessions import FrontendSessions
from agentcomm.protocol.models import Envelope
from agentcomm.server.metrics import HubMetrics
from agentcomm.server.routing import RouteRunner
from agentcomm.telemetry.spans import Tracing

# Where a browser app's own trace is named: the TEXT's metadata (docs/protocol.md).
TRACEPARENT_KEY = "traceparent"

# No parent at all (an empty context is immutable): a frame without a browser's trace starts
# a new one.
_ROOT = Context()


class TracedRouteRunner(RouteRunner):
    def __init__(
        self,
        router: ServerRouter,
        bus: Bus,
        sessions: FrontendSessions,
        tracing: Tracing,
        metrics: HubMetrics | None = None,
    ) -> None:
        super().__init__(router, bus, sessions, metrics)
        self._tracing = tracing
        self._send_untraced = sessions.send
        self.send_frame = self._traced_send

    async def accept_from_frontend(
        self, frontend_id: str, message: Envelope, *, received_at: float | None = None
    ) -> None:
        metadata = message.metadata
        parent = self._tracing.parent_from(metadata.get(TRACEPARENT_KEY)) if metadata else None
        span = self._tracing.start(
            f"receive {message.message_type.value}",
            "server",
            # Without a browser's trace the turn's trace starts here, whatever task this is.
            parent=parent or _ROOT,
            attributes={
                "agentcomm.message.id": message.message_id,
                "agentcomm.frontend.id": frontend_id,
                "agentcomm.receiver.id": message.receiver_id or "",
            },
        )
        if received_at is not None:
            # How long the frame waited behind others on its socket before this.
            span.set_attribute(
                "agentcomm.queued_ms",
                round((asyncio.get_running_loop().time() - received_at) * 1000, 3),
            )
        with self._tracing.current(span):
            await super().accept_from_frontend(frontend_id, message, received_at=received_at)

    async def accept_from_agent(
        self, agent_id: str, message: Envelope, *, traceparent: str = ""
    ) -> Envelope:
        parent = self._tracing.parent_from(traceparent) if traceparent else None
        if parent is None:
            return await super().accept_from_agent(agent_id, message)
        span = self._tracing.start(
            f"receive {message.message_type.value} from agent",
            "server",
            parent=parent,
            attributes={
                "rpc.system": "grpc",
                "agentcomm.message.id": message.message_id,
                "agentcomm.agent.id": agent_id,
            },
        )
        with self._tracing.current(span):
            return await super().accept_from_agent(agent_id, message)

    def _traced_send(self, frontend_id: str, frame: bytes) -> bool:
        """A frame handed to a frontend's socket is an event on the span that decided it
        (the frame received for its status echoes, the consumed answer for the reply): a
        turn sends four frames or more, and an event costs a fraction of a span."""
        sent = self._send_untraced(frontend_id, frame)
        span = self._tracing.current_span()
        if span.is_recording():
            # delivered False: no such session (the frontend is gone).
            span.add_event(
                "send frame",
                {"agentcomm.frame.size": len(frame), "agentcomm.frame.delivered": sent},
            )
        return sent
