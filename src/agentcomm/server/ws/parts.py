"""What the WebSocket adapter is lent by the hub, and nothing more."""

from __future__ import annotations

from dataclasses import dataclass

from agentcomm.config import Settings
from agentcomm.core.auth import Authenticator
from agentcomm.core.clock import Clock
from agentcomm.core.sessions import FrontendSessions
from agentcomm.history.store import ConversationStore
from agentcomm.server.metrics import HubMetrics
from agentcomm.server.presence_feed import PresenceFeed
from agentcomm.server.routing import RouteRunner
from agentcomm.server.state import ServerState
from agentcomm.server.ws.output import OutputScheduler


@dataclass(frozen=True, slots=True)
class FrontendParts:
    settings: Settings
    state: ServerState
    sessions: FrontendSessions
    router: RouteRunner
    presence: PresenceFeed
    auth: Authenticator
    output: OutputScheduler
    metrics: HubMetrics
    clock: Clock
    # Conversation history of the sessions' users (None: off).
    history: ConversationStore | None = None
