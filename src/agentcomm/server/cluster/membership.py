"""This hub as a member of a cluster: its peers' presence merged with its own, its own shared
with them, operator commands across hubs, and the list of hubs.

A hub alone on its bus is a cluster of one: the same code runs, and finds no peer.
"""

from __future__ import annotations

from collections.abc import Callable

from agentcomm.bus.base import Bus, QueueOptions, Subscription
from agentcomm.core.brokers import BrokerRegistry
from agentcomm.core.clock import Clock
from agentcomm.core.cluster_presence import ClusterPresence
from agentcomm.core.commands import CommandCenter
from agentcomm.core.peers import PeerPresence
from agentcomm.core.presence import AgentRegistry
from agentcomm.protocol.ids import server_tag
from agentcomm.protocol.queues import hub_queue
from agentcomm.server.cluster.commands import ClusterCommands
from agentcomm.server.cluster.presence_sync import PresenceSync

# Requests of peer hubs run concurrently: each may wait for an agent's command result.
_HUB_QUEUE_CONCURRENCY = 16


class ClusterMembership:
    def __init__(
        self,
        bus: Bus,
        *,
        clock: Clock,
        server_id: str,
        registry: AgentRegistry,
        brokers: BrokerRegistry,
        commands: CommandCenter,
        lease_seconds: float,
        queue_expires_ms: int,
        websocket_url: Callable[[], str],
        grpc_address: Callable[[], str],
    ) -> None:
        self._bus = bus
        self._clock = clock
        self._server_id = server_id
        self._tag = server_tag(server_id)
        self._queue_expires_ms = queue_expires_ms
        self._websocket_url = websocket_url
        self._grpc_address = grpc_address
        self.peers = PeerPresence(clock, server_id)
        self.presence = ClusterPresence(registry, self.peers)
        self.commands = ClusterCommands(commands, self.presence, bus, self._tag)
        self.sync = PresenceSync(
            bus,
            server_id=server_id,
            registry=registry,
            brokers=brokers,
            cluster=self.presence,
            lease_seconds=lease_seconds,
            websocket_url=websocket_url,
            grpc_address=grpc_address,
        )
        self._requests: Subscription | None = None

    async def start(self) -> None:
        queue = hub_queue(self._tag)
        await self._bus.declare_queue(queue, QueueOptions(expires_ms=self._queue_expires_ms))
        self._requests = await self._bus.consume(
            queue,
            self.commands.on_hub_message,
            concurrency=_HUB_QUEUE_CONCURRENCY,
            prefetch=_HUB_QUEUE_CONCURRENCY,
        )
        await self.sync.start()

    async def leave(self) -> None:
        """Tells the peers this hub goes, and stops taking their requests."""
        await self.sync.stop()
        if self._requests is not None:
            await self._requests.cancel()

    async def renew(self) -> None:
        """A full report to the peers (the lease of this hub's agents), and peers that went
        silent forgotten."""
        self.sync.renew()
        self.presence.expire_peers()

    def hubs(self) -> list[dict[str, object]]:
        """This hub and every live peer, for `GET /api/hubs`."""
        now = self._clock.monotonic()
        registry = self.presence.registry
        own: dict[str, object] = {
            "server_id": self._server_id,
            "websocket_url": self._websocket_url(),
            "grpc_address": self._grpc_address(),
            "agents_online": registry.online_count(),
            "brokers_online": None,
            "last_heard_s": 0.0,
            "this_hub": True,
        }
        peers = [{**hub.as_json(now), "this_hub": False} for hub in self.peers.hubs()]
        return [own, *sorted(peers, key=lambda hub: str(hub["server_id"]))]

    def hub_count(self) -> int:
        return 1 + len(self.peers.hubs())
