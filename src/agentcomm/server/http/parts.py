"""What the HTTP API is lent by the hub, and nothing more."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from agentcomm.config import Settings
from agentcomm.core.auth import Authenticator
from agentcomm.core.brokers import BrokerRegistry
from agentcomm.core.commands import CommandCenter
from agentcomm.core.presence import AgentRegistry
from agentcomm.server.metrics import HubMetrics


@dataclass(frozen=True, slots=True)
class HttpParts:
    settings: Settings
    auth: Authenticator
    registry: AgentRegistry
    brokers: BrokerRegistry
    commands: CommandCenter
    metrics: HubMetrics
    # The checks /readyz shows, and whether the hub is ready (all of them, and started).
    readiness: Callable[[], dict[str, bool]]
    is_ready: Callable[[], bool]
