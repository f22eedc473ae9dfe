"""The reference broker: consumes broker_input_queue, routes, publishes to server_input_queue.

It runs as its own process (`agentcomm broker`) or in-process beside the server on a shared
bus. Several may consume one broker_input_queue as competing consumers: each keeps its own
ledger (see `ledger.py`) and its own copy of the agent table.

A delivery is acked (the handler returns) only after its output was confirmed by the bus; when
the publish fails the handler raises and the bus redelivers, so no message is lost to a broker
crash or a bus hiccup.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from agentcomm.broker.ledger import RoutingLedger
from agentcomm.broker.presence import AgentTable, PresenceFollower
from agentcomm.broker.routing import Decision, Outcome, Router, reject_undecodable
from agentcomm.broker.stamping import decode_fields, routed_body
from agentcomm.bus.base import Bus, Delivery, Subscription
from agentcomm.grpc_channel import CLIENT_KEEPALIVE, ClientTls, open_channel
from agentcomm.protocol.codec import encode_for_bus, parse_json_object
from agentcomm.protocol.errors import ProtocolError
from agentcomm.protocol.ids import new_broker_id
from agentcomm.protocol.models import Envelope
from agentcomm.protocol.queues import BROKER_INPUT_QUEUE, SERVER_INPUT_QUEUE
from agentcomm.protocol.vocabulary import ErrorCode
from agentcomm.telemetry import tracing_for

if TYPE_CHECKING:
    from agentcomm.telemetry.spans import Tracing

log = logging.getLogger(__name__)


# gRPC's own reconnect backoff grows to two minutes by default; a broker should notice a
# restarted server within seconds, as its own retry loop (presence.py) expects.
_CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 5000),
    *CLIENT_KEEPALIVE,
)


class BrokerStartError(Exception):
    """The broker could not start; the message says what was unreachable."""


@dataclass(slots=True)
class BrokerStats:
    """Counts of what the broker did with the messages it took, since it started."""

    routed: int = 0
    errors: int = 0
    dropped: int = 0


class ReferenceBroker:
    """Routes chat messages between frontends and agents (PROTOCOL §4).

    `start()` connects the bus when needed, declares the two queues, registers with the
    server over gRPC, waits (bounded) for the first agent list and starts consuming; `stop()`
    undoes that in reverse order within `stop_timeout`. The bus is not closed: whoever built it
    owns it, which lets the broker share an in-process bus with the server.
    """

    def __init__(
        self,
        bus: Bus,
        grpc_target: str,
        *,
        broker_id: str | None = None,
        broker_name: str = "reference-broker",
        prefetch: int = 200,
        concurrency: int = 1,
        start_timeout: float = 10.0,
        stop_timeout: float = 10.0,
        ledger: RoutingLedger | None = None,
        token: str = "",
        tls: ClientTls | None = None,
        returning_grace: float = 30.0,
    ) -> None:
        self.broker_id = broker_id or new_broker_id()
        self.broker_name = broker_name
        self.grpc_target = grpc_target
        # returning_grace: how long agents a restarted server does not know yet are still
        # routed to (see AgentTable); the server's AGENT_TIMEOUT, which bounds their return.
        self.table = AgentTable(returning_grace=returning_grace)
        self.router = Router(self.broker_id, ledger)
        self.stats = BrokerStats()
        self._bus = bus
        self._token = token
        self._tls = tls
        self._prefetch = prefetch
        # Messages handled at once; the server restores the order of a reply's chunks.
        self._concurrency = concurrency
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._channel: grpc.aio.Channel | None = None
        self._presence: PresenceFollower | None = None
        self._subscription: Subscription | None = None
        # None when tracing is off: the decision is then made without a look at spans.
        self._tracing = tracing_for("agentcomm.broker")

    @property
    def is_running(self) -> bool:
        return self._subscription is not None

    async def start(self) -> None:
        """Starts routing. Raises BrokerStartError when the bus or the server is unreachable."""
        if self._subscription is not None:
            return
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        if not self._bus.is_connected:
            await self._bus.connect()
        await self._bus.declare_queue(BROKER_INPUT_QUEUE)
        await self._bus.declare_queue(SERVER_INPUT_QUEUE)

        self._channel = open_channel(
            self.grpc_target, token=self._token, options=_CHANNEL_OPTIONS, tls=self._tls
        )
        self._presence = PresenceFollower(
            self._channel,
            self.table,
            broker_id=self.broker_id,
            broker_name=self.broker_name,
            on_offline=self.router.agent_went_offline,
            call_timeout=self._start_timeout,
        )
        try:
            # Waiting for readiness lets a broker start a moment before its server.
            await self._presence.register(wait_for_ready=True)
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
                why = f"no answer within {self._start_timeout:.0f}s (is the server running?)"
            else:
                why = f"{exc.code().name}: {exc.details()}"
            raise BrokerStartError(
                f"Cannot register with the server at {self.grpc_target}: {why}"
            ) from exc
        self._presence.start()
        try:
            await asyncio.wait_for(self._presence.wait_synced(), self._start_timeout)
        except TimeoutError:
            log.warning(
                "No agent list from %s within %.0fs; routing starts without one",
                self.grpc_target,
                self._start_timeout,
            )

        self._subscription = await self._bus.consume(
            BROKER_INPUT_QUEUE,
            self.handle,
            prefetch=self._prefetch,
            concurrency=self._concurrency,
            on_dead_letter=self._gave_up,
        )
        log.info("Broker %s routing from %s", self.broker_id, BROKER_INPUT_QUEUE)

    async def stop(self) -> None:
        """Stops consuming (letting the message in hand finish), presence, then gRPC."""
        subscription, self._subscription = self._subscription, None
        presence, self._presence = self._presence, None
        channel, self._channel = self._channel, None
        if subscription is not None:
            try:
                await asyncio.wait_for(subscription.cancel(), self._stop_timeout)
            except TimeoutError:
                log.warning("Consumer did not stop within %.0fs", self._stop_timeout)
        if presence is not None:
            await presence.stop()
        if channel is not None:
            await channel.close(grace=None)

    async def wait_for_presence(self, predicate: Callable[[AgentTable], bool]) -> None:
        """Returns once `predicate` holds for the agent table (wrap it in a timeout)."""
        if self._presence is None:
            raise RuntimeError("Cannot wait for presence: the broker is not running.")
        await self._presence.wait_for(predicate)

    async def __aenter__(self) -> ReferenceBroker:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def handle(self, delivery: Delivery) -> None:
        """The bus handler for one message of broker_input_queue."""
        try:
            envelope, fields = decode_fields(delivery.body)
        except ProtocolError as exc:
            await self._reject(delivery, exc)
            return
        for agent_id in self.table.prune():
            self.router.agent_went_offline(agent_id)
        try:
            if self._tracing is None:
                decision, output = self._decide(envelope, fields)
            else:
                decision, output = self._traced_decide(self._tracing, envelope, fields)
        except Exception:
            # A message this broker cannot handle would fail the same way on every redelivery
            # and then be dropped: its sender is told at once instead.
            log.exception("Cannot route message %s", delivery.message_id)
            await self._reject(
                delivery,
                ProtocolError(ErrorCode.INTERNAL, "The broker could not route this message."),
            )
            return
        if output is not None:
            body, message_id = output
            await self._bus.publish(SERVER_INPUT_QUEUE, body, message_id=message_id)
        self._count(decision)

    def _traced_decide(
        self, tracing: Tracing, envelope: Envelope, fields: dict[str, Any]
    ) -> tuple[Decision, tuple[bytes, str] | None]:
        """`_decide` in a span of its own, under the delivery's (only within a trace)."""
        if not tracing.in_trace():
            return self._decide(envelope, fields)
        span = tracing.start(
            "broker decide",
            attributes={"agentcomm.message.id": envelope.message_id},
        )
        try:
            decision, output = self._decide(envelope, fields)
            span.set_attribute("agentcomm.broker.outcome", decision.outcome.value)
            if decision.routed_to is not None:
                span.set_attribute("agentcomm.broker.routed_to", decision.routed_to)
            return decision, output
        finally:
            span.end()

    def _decide(
        self, envelope: Envelope, fields: dict[str, Any]
    ) -> tuple[Decision, tuple[bytes, str] | None]:
        """The decision for a message, and what it publishes: a body and its message_id (None:
        nothing, the message is dropped)."""
        decision = self.router.decide(envelope, self.table.agents, stale=self.table.stale)
        output = None
        if decision.routed_to is not None:
            body = routed_body(fields, decision.routed_to, envelope.hops + 1)
            if body is None:
                body = encode_for_bus(decision.output or envelope)
            output = (body, envelope.message_id)
        elif decision.error is not None:
            output = (encode_for_bus(decision.error), decision.error.message_id)
        # Recorded before the publish, so that messages handled meanwhile (the broker handles
        # several at once) already see this one's agent: its load, its conversation. Recording
        # is idempotent by message_id, so a redelivery after a failed publish counts once.
        self.router.commit(decision)
        return decision, output

    async def _gave_up(self, delivery: Delivery) -> None:
        """Out of attempts (the bus kept failing under it): its sender is told, if the bus
        takes that now, instead of waiting for an answer that will not come."""
        await self._reject(
            delivery,
            # Not bus_unavailable: that says "not accepted, send it again", and this one was.
            ProtocolError(
                ErrorCode.INTERNAL,
                f"The broker gave up on this message after {delivery.attempt} attempts.",
            ),
        )

    def _count(self, decision: Decision) -> None:
        source = decision.source
        if decision.outcome is Outcome.ROUTED:
            self.stats.routed += 1
            # Checked first: the line's arguments would be worked out for every message.
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s %s %s", source.message_type.value, source.message_id, decision.note)
        elif decision.outcome is Outcome.ERROR:
            self.stats.errors += 1
            log.info(
                "%s %s refused: %s", source.message_type.value, source.message_id, decision.note
            )
        else:
            self.stats.dropped += 1
            log.warning("%s %s %s", source.message_type.value, source.message_id, decision.note)

    async def _reject(self, delivery: Delivery, exc: ProtocolError) -> None:
        # Redelivering a malformed message cannot fix it: tell the sender if there is one,
        # and ack either way.
        try:
            data = parse_json_object(delivery.body)
        except ProtocolError:
            data = {}
        error = reject_undecodable(data, exc.code, exc.text, self.broker_id)
        if error is None:
            self.stats.dropped += 1
            log.warning(
                "Dropped message %s from %s: %s (no sender to tell)",
                delivery.message_id,
                delivery.queue,
                exc.text,
            )
            return
        await self._bus.publish(
            SERVER_INPUT_QUEUE, encode_for_bus(error), message_id=error.message_id
        )
        self.stats.errors += 1
        log.info("Refused message %s from %s: %s", delivery.message_id, error.receiver_id, exc.text)
