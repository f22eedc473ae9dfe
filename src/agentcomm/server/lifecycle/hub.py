"""The composition root: builds every part of the server from Settings and runs its lifecycle.

The hub owns the parts (registries, sessions, routing, inboxes, metrics) and lends each adapter
only those it uses (`frontend_parts`, `grpc_parts`, `http_parts`); no adapter sees the hub.

Start order: the gRPC port (taken first, so that a taken port stops the start before anything
runs) → bus → queues → consumers → gRPC serving → periodic tasks → advertisement. Stop runs the
same steps in reverse, each bounded, so nothing is acked that was not handled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc

from agentcomm.bus.base import Bus, BusError, QueueOptions, Subscription
from agentcomm.config import Settings
from agentcomm.core.answers import AnswerLedger
from agentcomm.core.auth import Authenticator
from agentcomm.core.brokers import BrokerRegistry
from agentcomm.core.clock import Clock, SystemClock
from agentcomm.core.commands import CommandCenter
from agentcomm.core.presence import AgentRegistry
from agentcomm.core.routing import AnswerEvent, ServerRouter
from agentcomm.core.sessions import FrontendSessions
from agentcomm.core.streams import ReplyStreams
from agentcomm.core.timers import LoopTimers
from agentcomm.gateways.a2a.gateway import A2AGateway, A2AParts
from agentcomm.protocol.ids import new_server_id, server_tag
from agentcomm.protocol.models import AgentInfo
from agentcomm.protocol.queues import (
    AGENT_METADATA_QUEUE,
    BROKER_INPUT_QUEUE,
    SERVER_ADVERTISEMENT_QUEUE,
    SERVER_INPUT_QUEUE,
    agent_queue,
    server_queue,
)
from agentcomm.server.bus_input import Advertiser, BusInput
from agentcomm.server.cluster.membership import ClusterMembership
from agentcomm.server.collector import CollectorTuning
from agentcomm.server.grpc.inboxes import AgentInboxes
from agentcomm.server.grpc.parts import GrpcParts
from agentcomm.server.grpc.server import GrpcListener
from agentcomm.server.history_feed import ServerHistory
from agentcomm.server.http.parts import HttpParts
from agentcomm.server.lifecycle.tasks import OwnedTasks
from agentcomm.server.metrics import QUEUE_STATS_SECONDS, HubMetrics
from agentcomm.server.presence_feed import PresenceFeed
from agentcomm.server.routing import RouteRunner
from agentcomm.server.state import ServerState
from agentcomm.server.ws.output import OutputScheduler
from agentcomm.server.ws.parts import FrontendParts
from agentcomm.telemetry import tracing_for

log = logging.getLogger(__name__)

# A per-server queue outlives its server by this long, then RabbitMQ removes it.
SERVER_QUEUE_EXPIRES_MS = 10 * 60 * 1000


class Hub:
    """One server process: registries, sessions, routing, bus consumers and the gRPC server."""

    def __init__(self, settings: Settings, bus: Bus, *, clock: Clock | None = None) -> None:
        self.settings = settings
        self.bus = bus
        self.clock = clock or SystemClock()
        self.server_id = new_server_id()
        self.server_tag = server_tag(self.server_id)
        self.state = ServerState()
        self.auth = Authenticator(settings.auth_secret)
        self.registry = AgentRegistry(
            self.clock,
            agent_timeout=settings.agent_timeout,
            stream_grace=settings.stream_grace,
            timers=LoopTimers(),
            offline_retention=settings.offline_agent_retention,
            max_offline=settings.offline_agents_kept,
        )
        self.brokers = BrokerRegistry(self.clock)
        self.sessions = FrontendSessions(
            self.clock,
            resume_window=settings.resume_window,
            server_tag=self.server_tag,
            # Half: a resumed frontend gets its backlog and what comes meanwhile in one queue.
            backlog_bytes=settings.outbound_queue_bytes // 2,
        )
        self.commands = CommandCenter(self.registry)
        # This hub among its peers: their agents merged with this hub's own (`self.cluster`),
        # operator commands for agents on any hub.
        self.membership = ClusterMembership(
            bus,
            clock=self.clock,
            server_id=self.server_id,
            registry=self.registry,
            brokers=self.brokers,
            commands=self.commands,
            lease_seconds=settings.agent_timeout,
            queue_expires_ms=SERVER_QUEUE_EXPIRES_MS,
            websocket_url=lambda: self.public_websocket_url,
            grpc_address=lambda: f"{settings.grpc_host}:{self.grpc_port}",
        )
        self.cluster = self.membership.presence
        self.answers = AnswerLedger(
            self.clock,
            delivery_timeout=settings.delivery_timeout,
            answer_timeout=settings.answer_timeout,
        )
        decisions = ServerRouter(
            server_id=self.server_id,
            registry=self.cluster,
            sessions=self.sessions,
            answers=self.answers,
            streams=ReplyStreams(
                self.clock,
                timeout=settings.stream_reorder_timeout,
                stream_bytes=settings.stream_reorder_bytes,
                agent_bytes=settings.stream_reorder_agent_bytes,
                total_bytes=settings.stream_reorder_total_bytes,
            ),
            clock=self.clock,
            # Agents of a server before this one reconnect within their heartbeat and backoff.
            expect_agents_for=settings.agent_timeout,
            peer_is_live=lambda tag: self.membership.peers.hub_of_tag(tag) is not None,
        )
        self.metrics = HubMetrics()
        tracing = tracing_for("agentcomm.server")
        if tracing is None:
            self.router = RouteRunner(decisions, bus, self.sessions, self.metrics)
        else:
            from agentcomm.server.tracing import TracedRouteRunner

            self.router = TracedRouteRunner(decisions, bus, self.sessions, tracing, self.metrics)
        self.inboxes = AgentInboxes(bus, tracing)
        # A2A callers reach agents through the router as a frontend does (gateways/a2a/).
        self.a2a = A2AGateway(
            A2AParts(
                settings=settings,
                auth=self.auth,
                sessions=self.sessions,
                router=self.router,
                agents=self.cluster,
            )
        )
        self.metrics.track(
            self.sessions.live_count,
            self.cluster.online_count,
            self.membership.hub_count,
            agents_connected=self.registry.online_count,
        )
        decisions.observe(self.metrics.count_routed)
        self.answers.observe_timings(
            self.metrics.first_token.observe, self.metrics.final_answer.observe
        )
        decisions.observe_answer_events(self.metrics.count_answer_event)
        # Conversation history (None: HISTORY_URL=none), fed by the router, written off its path.
        self.history = ServerHistory.from_settings(settings, self.sessions)
        if self.history is not None:
            feed = self.history.feed
            decisions.observe_conversations(feed.text_accepted, feed.answered)
        # Shown from the start (at 0), so that a rate can be taken before the first one.
        self.metrics.declare_answer_events([event.value for event in AnswerEvent])
        self.presence = PresenceFeed(self.cluster, self.sessions, self.clock)
        self.cluster.subscribe(self._follow_presence_for_answers)
        # Writes what every socket has queued, once per turn of the event loop.
        self.output = OutputScheduler(total_bytes=settings.outbound_total_bytes)
        self.metrics.read_slow_closes(lambda: self.output.too_slow_closes)
        self._collector = CollectorTuning()
        self.grpc_port: int | None = None
        # Set by whoever serves HTTP (the runner), for the advertisement.
        self.http_port: int = settings.port
        self.grpc_server: grpc.aio.Server | None = None
        self._grpc: GrpcListener | None = None
        self._bus_input = BusInput(self.router, self.registry, self.brokers)
        self._advertiser = Advertiser(
            bus,
            self.server_id,
            lambda: self.public_websocket_url,
            lambda: f"{settings.grpc_host}:{self.grpc_port}",
        )
        self._subscriptions: list[Subscription] = []
        self._tasks = OwnedTasks()
        self._started = False

    # -- what each adapter is lent -------------------------------------------------------------

    def frontend_parts(self) -> FrontendParts:
        return FrontendParts(
            settings=self.settings,
            state=self.state,
            sessions=self.sessions,
            router=self.router,
            presence=self.presence,
            auth=self.auth,
            output=self.output,
            metrics=self.metrics,
            clock=self.clock,
            history=self.history.store if self.history is not None else None,
        )

    def grpc_parts(self) -> GrpcParts:
        return GrpcParts(
            settings=self.settings,
            server_id=self.server_id,
            auth=self.auth,
            registry=self.registry,
            cluster=self.cluster,
            brokers=self.brokers,
            commands=self.commands,
            inboxes=self.inboxes,
            router=self.router,
            declare_agent_queue=self.declare_agent_queue,
        )

    def http_parts(self) -> HttpParts:
        return HttpParts(
            settings=self.settings,
            auth=self.auth,
            registry=self.registry,
            agents=self.cluster,
            brokers=self.brokers,
            commands=self.membership.commands,
            hubs=self.membership.hubs,
            metrics=self.metrics,
            readiness=self.readiness,
            is_ready=lambda: self.ready,
            a2a=self.a2a,
            history=self.history.store if self.history is not None else None,
            history_status=self.history_status,
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def take_grpc_port(self) -> None:
        """Binds the gRPC port (once), before anything else starts; raises CannotListen."""
        if self._grpc is None:
            self._grpc = GrpcListener(self.grpc_parts())
            self.grpc_server, self.grpc_port = self._grpc.server, self._grpc.port

    async def start(self) -> None:
        self.take_grpc_port()
        assert self._grpc is not None
        if not self.auth.enabled:
            log.warning(
                "AUTH_SECRET is not set: the hub is OPEN — anyone who can reach its ports may "
                "connect as any frontend, agent or broker. Set AUTH_SECRET in production."
            )
        if self.history is not None:
            await self.history.start()
            if self.history.retention_seconds:
                self._tasks.every(3600.0, self.history.expire_old, "history-retention")
        await self.bus.connect()
        for name in (
            BROKER_INPUT_QUEUE,
            SERVER_INPUT_QUEUE,
            SERVER_ADVERTISEMENT_QUEUE,
            AGENT_METADATA_QUEUE,
        ):
            await self.bus.declare_queue(name)
        await self.bus.declare_queue(
            server_queue(self.server_tag), QueueOptions(expires_ms=SERVER_QUEUE_EXPIRES_MS)
        )
        bus_input = self._bus_input
        prefetch = self.settings.rabbitmq_prefetch
        # Broker output is handled many at a time, so that publish confirms overlap; the
        # order a frontend sees within one reply stream is restored by the router.
        concurrency = min(prefetch, self.settings.consumer_concurrency)
        for queue, handler, parallel in (
            (SERVER_INPUT_QUEUE, bus_input.on_server_input, concurrency),
            (server_queue(self.server_tag), bus_input.on_server_input, concurrency),
            (AGENT_METADATA_QUEUE, bus_input.on_metadata, 1),
        ):
            self._subscriptions.append(
                await self.bus.consume(queue, handler, prefetch=prefetch, concurrency=parallel)
            )
        await self._grpc.start()
        await self.membership.start()
        self._tasks.every(self._sweep_interval(), self._sweep, "presence-sweep")
        self._tasks.every(
            self.membership.sync.refresh_seconds, self.membership.renew, "presence-renew"
        )
        self._tasks.every(
            self.settings.periodic_status_interval,
            self.presence.broadcast_full,
            "periodic-status",
        )
        self._tasks.every(
            self.settings.periodic_status_interval,
            self._advertiser.advertise_available,
            "advertise",
        )
        own_queues = (BROKER_INPUT_QUEUE, SERVER_INPUT_QUEUE, server_queue(self.server_tag))
        self._tasks.every(
            QUEUE_STATS_SECONDS,
            lambda: self.metrics.read_queue_stats(self.bus, own_queues),
            "queue-stats",
        )
        self._started = True
        try:
            await self._advertiser.advertise_available()
        except BusError as exc:
            log.warning("Could not advertise this server: %s", exc)
        log.info(
            "Server %s ready: gRPC on %s:%s, bus %s",
            self.server_id,
            self.settings.grpc_host,
            self.grpc_port,
            self.settings.message_bus,
        )

    async def stop(self) -> None:
        """Reverse of start, each step bounded by the shutdown timeout."""
        if not self._started:
            if self._grpc is not None:
                # Its port was taken, and perhaps nothing else: it is let go all the same.
                await self._grpc.server.stop(None)
                self._grpc = None
            with contextlib.suppress(BusError):
                await self.bus.close()
            if self.history is not None:
                await self.history.stop(0.0)
            return
        self._started = False
        self.state.draining = True
        self.registry.stop_judging_streams()
        budget = self.settings.shutdown_timeout
        await self._tasks.cancel_all()
        # First: the peers show this hub's agents offline now, not when its lease runs out, and
        # the agents reconnect to them.
        with contextlib.suppress(BusError, TimeoutError):
            async with asyncio.timeout(2.0):
                await self.membership.leave()
        if self.grpc_server is not None:
            # Streams end with the grace period; unary calls in progress may finish.
            await self.grpc_server.stop(grace=min(2.0, budget / 3))
        self._grpc = None
        await self.inboxes.close_all()
        self.commands.cancel_all()
        try:
            async with asyncio.timeout(budget / 2):
                for subscription in self._subscriptions:
                    await subscription.cancel()
        except TimeoutError:
            log.warning("Bus handlers did not finish in time; their messages will be redelivered")
        self._subscriptions.clear()
        with contextlib.suppress(BusError, TimeoutError):
            async with asyncio.timeout(2.0):
                await self._advertiser.advertise_unavailable()
        await self.bus.close()
        if self.history is not None:
            # Last: what the bus handlers delivered until now is history too.
            await self.history.stop(min(5.0, budget / 2))
        log.info("Server %s stopped", self.server_id)

    @property
    def draining(self) -> bool:
        return self.state.draining

    @property
    def ready(self) -> bool:
        return self._started and not self.state.draining and self.bus.is_connected

    def history_status(self) -> str:
        """`ok`, `off`, or `degraded: …` (history is not part of being ready: chat goes on)."""
        return self.history.status() if self.history is not None else "off"

    def readiness(self) -> dict[str, bool]:
        """The checks `/readyz` shows; the hub is ready when all hold and it has started."""
        draining = self.state.draining
        return {
            "bus": self.bus.is_connected,
            "grpc": self.grpc_server is not None and not draining,
            "accepting": not draining,
        }

    # -- agents ------------------------------------------------------------------------------

    async def declare_agent_queue(self, agent_id: str) -> None:
        # Declared plain durable, as agents of the described system declare it themselves:
        # queue arguments that differ would make their declaration fail.
        await self.bus.declare_queue(agent_queue(agent_id))

    @property
    def public_websocket_url(self) -> str:
        if self.settings.public_url:
            base = self.settings.public_url.rstrip("/")
            return base.replace("http://", "ws://", 1).replace("https://", "wss://", 1) + "/ws"
        host = self.settings.host
        if host in ("0.0.0.0", "::", ""):
            host = "localhost"
        return f"ws://{host}:{self.http_port}/ws"

    # -- periodic work -----------------------------------------------------------------------

    def _follow_presence_for_answers(self, delta: list[AgentInfo]) -> None:
        for info in delta:
            if info.is_online:
                self.answers.agent_online(info.agent_id)
            else:
                self.answers.agent_offline(info.agent_id)

    async def _sweep(self) -> None:
        self.registry.sweep()
        self.cluster.expire_peers()
        self.sessions.expire()
        self._collector.observe(len(self.state.connections))
        await self.router.release_overdue_streams()
        await self.router.answer_abandoned()
        await self.router.answer_overdue()

    def _sweep_interval(self) -> float:
        # A lost stream has its own timer (or none, with no grace), so only the silence timeout
        # sets the pace: sweeping every agent and session every 50 ms took CPU from fan-out.
        return max(0.05, min(1.0, self.settings.agent_timeout / 4))
