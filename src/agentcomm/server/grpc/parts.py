"""What the gRPC services are lent by the hub, and nothing more."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from agentcomm.config import Settings
from agentcomm.core.auth import Authenticator
from agentcomm.core.brokers import BrokerRegistry
from agentcomm.core.cluster_presence import ClusterPresence
from agentcomm.core.commands import CommandCenter
from agentcomm.core.presence import AgentRegistry
from agentcomm.server.grpc.inboxes import AgentInboxes
from agentcomm.server.routing import RouteRunner


@dataclass(frozen=True, slots=True)
class GrpcParts:
    settings: Settings
    server_id: str
    auth: Authenticator
    # This hub's own agents, and every agent of the cluster.
    registry: AgentRegistry
    cluster: ClusterPresence
    brokers: BrokerRegistry
    commands: CommandCenter
    inboxes: AgentInboxes
    router: RouteRunner
    # Makes sure an agent's queue exists before it registers or opens its message stream.
    declare_agent_queue: Callable[[str], Awaitable[None]]
