"""The reference routing broker: presence from the server's gRPC stream, routing over the bus."""

from __future__ import annotations

from agentcomm.broker.ledger import RoutingLedger
from agentcomm.broker.presence import AgentTable, PresenceFollower
from agentcomm.broker.routing import Decision, Outcome, Router
from agentcomm.broker.service import BrokerStartError, BrokerStats, ReferenceBroker

__all__ = [
    "AgentTable",
    "BrokerStartError",
    "BrokerStats",
    "Decision",
    "Outcome",
    "PresenceFollower",
    "ReferenceBroker",
    "Router",
    "RoutingLedger",
]
