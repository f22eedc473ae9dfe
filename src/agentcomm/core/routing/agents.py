"""Messages the broker routed to an agent: into the agent's queue, and what the sender is told.

An agent this server does not know yet, but whose queue exists, counts as one coming back
while the server is young (`expect_agents_until`): after a restart the agents of the server
before it reconnect, and their messages wait in their queues meanwhile. A frontend's TEXT gets
its `routed` and `delivered` echoes; a call between agents is looked after by the ledger.
"""

from __future__ import annotations

from agentcomm.core.answers import AnswerLedger
from agentcomm.core.clock import Clock
from agentcomm.core.presence_views import AgentLookup, Reach
from agentcomm.core.routing.echoes import EchoOrder
from agentcomm.core.routing.effects import Plan, Publish, QueueMissing
from agentcomm.core.routing.frontends import FrontendDelivery
from agentcomm.core.routing.refusals import Refusals
from agentcomm.protocol.codec import encode_envelope
from agentcomm.protocol.ids import is_frontend_id
from agentcomm.protocol.models import Envelope
from agentcomm.protocol.queues import agent_queue
from agentcomm.protocol.rules import sender_of
from agentcomm.protocol.vocabulary import ErrorCode, MessageType, RoutingStatus


class AgentDelivery:
    """Routed messages into agents' queues."""

    def __init__(
        self,
        *,
        registry: AgentLookup,
        answers: AnswerLedger,
        echoes: EchoOrder,
        frontends: FrontendDelivery,
        refusals: Refusals,
        publish_timeout: float,
        expect_agents_until: float,
        clock: Clock,
    ) -> None:
        self._registry = registry
        self._answers = answers
        self._echoes = echoes
        self._frontends = frontends
        self._refusals = refusals
        self._publish_timeout = publish_timeout
        self._expect_agents_until = expect_agents_until
        self._clock = clock

    def deliver(self, agent_id: str, message: Envelope) -> Plan[None]:
        """A message the broker routed to an agent: into its queue, with the sender's echoes,
        or refused with why not."""
        reach = self._registry.reach(agent_id)
        # A server that has just started knows no agent yet: those of the server before it (a
        # restart) are on their way back. Their messages wait in their queues, and their
        # senders get ERROR agent_offline if they are not back within DELIVERY_TIMEOUT.
        unknown = reach is Reach.UNKNOWN
        expected = unknown and self._clock.monotonic() < self._expect_agents_until
        if unknown and not expected:
            yield from self._refusals.reject(
                message, ErrorCode.UNKNOWN_RECEIVER, f"No agent is registered as {agent_id!r}."
            )
            return
        if reach is Reach.OFFLINE:
            yield from self._refusals.reject(
                message, ErrorCode.AGENT_OFFLINE, f"Agent {agent_id!r} is offline."
            )
            return
        sender = sender_of(message) or ""
        is_text = message.message_type is MessageType.TEXT
        from_frontend = is_frontend_id(sender) and is_text
        frontends = self._frontends
        if from_frontend:
            yield from self._echoes.wait(message.message_id)
            if not expected:
                yield from frontends.echo(sender, message, RoutingStatus.ROUTED)
        try:
            yield Publish(
                agent_queue(agent_id),
                # Internal fields stay on the server's side (PROTOCOL §0).
                encode_envelope(message, for_client=True, routing_status=RoutingStatus.DELIVERED),
                message.message_id,
                timeout=self._publish_timeout,
            )
        except QueueMissing:
            if expected:
                yield from self._refusals.reject(
                    message, ErrorCode.UNKNOWN_RECEIVER, f"No agent is registered as {agent_id!r}."
                )
                return
            yield from self._refusals.reject(
                message, ErrorCode.AGENT_OFFLINE, f"Agent {agent_id!r} has no queue on the bus."
            )
            return
        if not from_frontend:
            # Calls between agents are looked after too (AnswerLedger.call_reached).
            self._answers.call_reached(agent_id, message, sender if is_text else None)
            return
        if expected:
            # Only now: without a queue it was an unknown receiver after all.
            yield from frontends.echo(sender, message, RoutingStatus.ROUTED)
        self._answers.delivered(sender, message, agent_id)
        if expected and self._registry.reach(agent_id) is Reach.UNKNOWN:
            self._answers.agent_offline(agent_id)
        if not self._answers.is_answered(sender, message.message_id):
            # A fast agent may have answered already; "delivered" after the answer
            # would only confuse the sender.
            yield from frontends.echo(sender, message, RoutingStatus.DELIVERED)
