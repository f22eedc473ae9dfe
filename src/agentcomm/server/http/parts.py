"""What the HTTP API is lent by the hub, and nothing more."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from agentcomm.config import Settings
from agentcomm.core.auth import Authenticator
from agentcomm.core.brokers import BrokerRegistry
from agentcomm.core.commands import CommandOutcome
from agentcomm.core.presence import AgentRegistry
from agentcomm.core.presence_views import AgentSource
from agentcomm.gateways.a2a.gateway import A2AGateway
from agentcomm.history.store import ConversationStore
from agentcomm.server.metrics import HubMetrics


class Commands(Protocol):
    """Operator commands for an agent wherever in the cluster it is."""

    def execute(
        self,
        agent_id: str,
        command_type: str,
        content: str,
        parameters: dict[str, str],
        *,
        timeout: float,
    ) -> Awaitable[CommandOutcome]: ...


@dataclass(frozen=True, slots=True)
class HttpParts:
    settings: Settings
    auth: Authenticator
    # This hub's own agents, and every agent of the cluster.
    registry: AgentRegistry
    agents: AgentSource
    brokers: BrokerRegistry
    commands: Commands
    # This hub and its peers.
    hubs: Callable[[], list[dict[str, object]]]
    metrics: HubMetrics
    # The checks /readyz shows, and whether the hub is ready (all of them, and started).
    readiness: Callable[[], dict[str, bool]]
    is_ready: Callable[[], bool]
    # The A2A endpoints under /a2a (none when absent).
    a2a: A2AGateway | None = None
    # Conversation history (None: off), and how it is (`ok`, `off`, `degraded: …`).
    history: ConversationStore | None = None
    history_status: Callable[[], str] = lambda: "off"
