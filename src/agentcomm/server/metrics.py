"""Prometheus metrics of one hub, in a registry the hub owns (no process-global state)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest


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
        # One labelled child per (type, source), looked up once: `labels()` validates its
        # arguments and takes a lock on every call, and every chat turn counts four messages.
        self._message_counts: dict[tuple[str, str], Counter] = {}

    def count_message(self, message_type: str, source: str) -> None:
        key = (message_type, source)
        counter = self._message_counts.get(key)
        if counter is None:
            counter = self._message_counts[key] = self.messages.labels(message_type, source)
        counter.inc()

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
    ) -> None:
        self.frontends.set_function(frontends)
        self.agents_online.set_function(agents_online)
        self.hubs.set_function(hubs)

    def render(self) -> bytes:
        return generate_latest(self.registry)
