"""Prometheus metrics of one hub, in a registry the hub owns (no process-global state).

Every label set is bounded: message types, routing statuses, error codes (unknown ones count as
`other`), resume outcomes, and the hub's own fixed queues; nothing per message, conversation,
frontend or agent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from agentcomm.bus.base import Bus, QueueStats
from agentcomm.protocol.models import Envelope
from agentcomm.protocol.queues import SERVER_QUEUE_PREFIX
from agentcomm.protocol.vocabulary import ErrorCode, MessageType, RoutingStatus

# Seconds from a TEXT accepted to its first word and to its final answer: an echo answers in
# milliseconds, a model in tens of seconds.
ANSWER_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# A confirmed publish: a local RabbitMQ confirms in about a millisecond.
PUBLISH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5)
_KNOWN_CODES = frozenset(code.value for code in ErrorCode)
# How often the depth and consumers of the hub's queues are asked of the bus: a passive
# declaration each on RabbitMQ, cheap, but not per scrape (scrapes may come from several).
QUEUE_STATS_SECONDS = 5.0


class HubMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.messages = Counter(
            "agentcomm_messages_total",
            "Chat messages handled, by type and where they came from",
            ["message_type", "source"],
            registry=self.registry,
        )
        self.errors = Counter(
            "agentcomm_errors_total",
            "ERROR answers sent, by error code",
            ["error_code"],
            registry=self.registry,
        )
        self.frontends = Gauge(
            "agentcomm_frontends_connected", "Live frontend sockets", registry=self.registry
        )
        self.agents_online = Gauge(
            "agentcomm_agents_online",
            "Agents currently online, on any hub of the cluster",
            registry=self.registry,
        )
        self.hubs = Gauge(
            "agentcomm_hubs",
            "Hubs of the cluster this hub hears from, itself included",
            registry=self.registry,
        )
        self.answer_events = Counter(
            "agentcomm_answer_events_total",
            "Answers the server had to look after: bounce_delivered (a broker sent an agent's "
            "answer back and the server delivered it), bounce_unmatched (one it could not "
            "match to a waiting TEXT), answer_timeout (a TEXT answered ERROR answer_timeout)",
            ["event"],
            registry=self.registry,
        )
        self.first_token = Histogram(
            "agentcomm_time_to_first_token_seconds",
            "From a TEXT accepted by this hub to the first part of its answer sent to the "
            "frontend (a chunk, or the whole answer)",
            buckets=ANSWER_BUCKETS,
            registry=self.registry,
        )
        self.final_answer = Histogram(
            "agentcomm_time_to_final_answer_seconds",
            "From a TEXT accepted by this hub to its final answer (REPLY or ERROR) sent",
            buckets=ANSWER_BUCKETS,
            registry=self.registry,
        )
        self.publish_latency = Histogram(
            "agentcomm_bus_publish_seconds",
            "A confirmed publish on the bus, from the call to the confirm, by queue (the "
            "hub's fixed queues; every agent's queue as agent_queue)",
            ["queue"],
            buckets=PUBLISH_BUCKETS,
            registry=self.registry,
        )
        self.refusals = Counter(
            "agentcomm_refusals_total",
            "ERROR answers and error echoes the router passed to frontends, by error code "
            "(from the hub, the broker or an agent; codes outside the protocol count as other)",
            ["error_code"],
            registry=self.registry,
        )
        self.resumes = Counter(
            "agentcomm_resumes_total",
            "Frontends that asked to resume a session: resumed, or given a new_session (the "
            "token was unknown, expired or wrong)",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in ("resumed", "new_session"):
            self.resumes.labels(outcome)
        self.agents_connected = Gauge(
            "agentcomm_agents_connected",
            "Agents online through this hub (registered here)",
            registry=self.registry,
        )
        # One labelled child per (type, source), looked up once: `labels()` validates its
        # arguments and takes a lock on every call, and every chat turn counts four messages.
        self._message_counts: dict[tuple[str, str], Counter] = {}
        self._publish_timers: dict[str, Histogram] = {}
        self._extra = _Readings()
        self.registry.register(self._extra)

    def count_message(self, message_type: str, source: str) -> None:
        key = (message_type, source)
        counter = self._message_counts.get(key)
        if counter is None:
            counter = self._message_counts[key] = self.messages.labels(message_type, source)
        counter.inc()

    def count_routed(self, message: Envelope) -> None:
        """Every message the router handles: counted by type and status, and an ERROR (or an
        error echo) by its code."""
        self.count_message(message.message_type.value, message.routing_status or "none")
        if (
            message.message_type is MessageType.ERROR
            or message.routing_status is RoutingStatus.ERROR
        ):
            self.count_refusal(message.error_code)

    async def read_queue_stats(self, bus: Bus, queues: tuple[str, ...]) -> None:
        """Asks the bus for each queue's depth and consumers (both buses can tell)."""
        ask = getattr(bus, "queue_stats", None)
        if ask is None:
            return
        stats: dict[str, tuple[int, int]] = {}
        for queue in queues:
            found: QueueStats | None = await ask(queue)
            if found is not None:
                label = "server_queue" if queue.startswith(SERVER_QUEUE_PREFIX) else queue
                stats[label] = (found.messages, found.consumers)
        self.set_queue_stats(stats)

    def count_refusal(self, error_code: str | None) -> None:
        code = error_code if error_code in _KNOWN_CODES else "other"
        self.refusals.labels(code).inc()

    def count_resume(self, outcome: str) -> None:
        self.resumes.labels(outcome).inc()

    def publish_timer(self, queue_label: str) -> Histogram:
        """The histogram child of one queue label, looked up once."""
        timer = self._publish_timers.get(queue_label)
        if timer is None:
            timer = self._publish_timers[queue_label] = self.publish_latency.labels(queue_label)
        return timer

    def read_slow_closes(self, read: Callable[[], int]) -> None:
        self._extra.slow_closes = read

    def set_queue_stats(self, stats: dict[str, tuple[int, int]]) -> None:
        """The depth and consumer count of each queue, as last read from the bus."""
        self._extra.queues = dict(stats)

    def declare_answer_events(self, events: list[str]) -> None:
        for event in events:
            self.answer_events.labels(event)

    def count_answer_event(self, event: str) -> None:
        self.answer_events.labels(event).inc()

    def track(
        self,
        frontends: Callable[[], int],
        agents_online: Callable[[], int],
        hubs: Callable[[], int],
        agents_connected: Callable[[], int] | None = None,
    ) -> None:
        self.frontends.set_function(frontends)
        self.agents_online.set_function(agents_online)
        self.hubs.set_function(hubs)
        if agents_connected is not None:
            self.agents_connected.set_function(agents_connected)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Readings(Collector):
    """What is read at scrape time from state kept elsewhere: the slow-client closes the
    output scheduler counts, and the queue statistics last polled from the bus."""

    def __init__(self) -> None:
        self.slow_closes: Callable[[], int] = lambda: 0
        self.queues: dict[str, tuple[int, int]] = {}

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        yield CounterMetricFamily(
            "agentcomm_slow_client_closes",
            "Frontend sockets closed as too slow (4008): their outbound queue was full",
            value=self.slow_closes(),
        )
        depth = GaugeMetricFamily(
            "agentcomm_queue_messages",
            "Messages ready in each of the hub's queues, as the bus last told (RabbitMQ: "
            "ready, not yet delivered)",
            labels=["queue"],
        )
        consumers = GaugeMetricFamily(
            "agentcomm_queue_consumers",
            "Consumers of each of the hub's queues, as the bus last told",
            labels=["queue"],
        )
        for queue, (messages, count) in sorted(self.queues.items()):
            depth.add_metric([queue], messages)
            consumers.add_metric([queue], count)
        yield depth
        yield consumers
