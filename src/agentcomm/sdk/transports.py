"""The two ways work reaches an agent, behind one protocol.

- `GrpcWork` ("grpc"): the server consumes agent_queue_<id> for the agent and streams each
  message over ReceiveMessages; the agent publishes its answers and acks each message once it is
  finished, on the SendOutputs stream (or with SendMessage and AckMessage calls on a server
  without it); a final answer carries its message's ack along. For agents that cannot reach the
  bus, and for the in-process bus.
- `BusWork` ("amqp", or "memory" on the hub's own in-process bus): the agent consumes
  agent_queue_<id> itself through the Bus interface and publishes to broker_input_queue.

Either way a message is acknowledged only after `handle` returned for it, and given back when
`handle` raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from agentcomm.bus import Bus, BusError, BusUnavailable, Delivery, Subscription, Unroutable
from agentcomm.bus.memory import InMemoryBus
from agentcomm.config import Settings
from agentcomm.protocol import (
    Envelope,
    ErrorCode,
    MessageType,
    ProtocolError,
    decode_envelope,
    encode_for_bus,
)
from agentcomm.protocol.ids import frontend_server_tag, is_frontend_id
from agentcomm.protocol.queues import BROKER_INPUT_QUEUE, agent_queue, server_queue
from agentcomm.sdk import envelopes
from agentcomm.sdk.errors import (
    AgentError,
    HandlingAborted,
    HubUnavailable,
    PublishFailed,
    WrongBus,
)
from agentcomm.sdk.hub_client import HubClient, IncomingMessage

if TYPE_CHECKING:
    from agentcomm.telemetry.spans import Tracing

log = logging.getLogger(__name__)

# The names of protocol/transports.py's Transport, as the SDK's API spells them.
TransportName = Literal["grpc", "amqp", "memory"]
Handle = Callable[[Envelope], Awaitable[None]]


class WorkTransport(Protocol):
    """Where an agent's messages come from and where its answers go."""

    name: TransportName
    # True when the server must know the agent before work can flow (gRPC).
    needs_registration: bool

    async def receive(self, agent_id: str, handle: Handle) -> None:
        """Feeds messages to `handle` until the link breaks (raises) or the call is cancelled.
        Raises WrongBus when the agent's queue is not where it reads.

        On cancellation it stops taking new messages and waits for those in hand; they finish
        (or are aborted through the dispatcher) and are acked or given back before it returns.
        """

    async def publish(self, envelope: Envelope) -> None: ...

    async def close(self) -> None: ...


_FINAL_TYPES = frozenset({MessageType.REPLY, MessageType.ERROR})


@dataclass(eq=False, slots=True)
class _Unacked:
    """A message in hand, and whether its ack went out (alone or with its final answer)."""

    envelope_id: str
    sender_id: str | None
    acked: bool = False


class GrpcWork:
    """Work over the server's ReceiveMessages / AckMessage / SendMessage calls."""

    name: TransportName = "grpc"
    needs_registration = True

    def __init__(self, hub: HubClient, prefetch: int, tracing: Tracing | None = None) -> None:
        self._hub = hub
        self._prefetch = prefetch
        # None when tracing is off; on, each message's handling continues the hub's trace.
        self._tracing = tracing
        self._agent_id = ""
        # Messages being handled; they may outlive the stream they came on (see receive).
        self._in_hand: set[asyncio.Task[None]] = set()
        # Messages not acked yet, by message_id: a final answer to one carries its ack.
        self._unacked: dict[str, _Unacked] = {}

    async def receive(self, agent_id: str, handle: Handle) -> None:
        self._agent_id = agent_id
        stream = self._hub.messages(agent_id, self._prefetch)
        taking = asyncio.Event()
        taking.set()

        async def read() -> None:
            async for incoming in stream:
                if not taking.is_set():
                    # Left unacknowledged: the server puts it back when the stream closes.
                    continue
                # Unnamed: a name would be formatted for every message, for a debugger only.
                task = asyncio.create_task(self._process(agent_id, incoming, handle))
                self._in_hand.add(task)
                task.add_done_callback(self._in_hand.discard)
            raise HubUnavailable("The server closed the message stream.")

        reader = asyncio.create_task(read(), name=f"agent-{agent_id}-messages")
        try:
            await asyncio.shield(reader)
        except asyncio.CancelledError:
            # Stopping. The server gives back every unacknowledged message the moment the
            # stream closes, so it stays open until the messages in hand are acked.
            taking.clear()
            await self.wait_in_hand()
            raise
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, AgentError):
                await reader
            await stream.aclose()
        # When the stream broke, messages in hand finish on their own: if the server already
        # gave them back, their redelivery is recognised by message_id and only acked.

    async def wait_in_hand(self) -> None:
        if self._in_hand:
            # _process settles every outcome itself; nothing here goes unobserved.
            await asyncio.gather(*self._in_hand, return_exceptions=True)

    async def _process(self, agent_id: str, incoming: IncomingMessage, handle: Handle) -> None:
        try:
            envelope = decode_envelope(incoming.envelope_json)
        except ProtocolError as exc:
            log.warning("Agent %s dropped an unreadable message: %s", agent_id, exc.text)
            await self._ack(agent_id, incoming.message_id, handled=True)
            return
        message_id = incoming.message_id or envelope.message_id
        unacked = _Unacked(envelope.message_id, envelope.sender_id)
        # A second copy of a message in hand (a redelivery after a reconnect) acks on its own.
        mine = self._unacked.setdefault(message_id, unacked) is unacked
        try:
            if self._tracing is None or not incoming.traceparent:
                await handle(envelope)
            else:
                with self._tracing.continuing(incoming.traceparent):
                    await handle(envelope)
        except HandlingAborted as exc:
            # Not acked: the server gives it back when the stream closes, a moment from now.
            log.info("Agent %s leaves message %s unfinished: %s", agent_id, message_id, exc)
        except AgentError as exc:
            log.warning("Agent %s gives message %s back: %s", agent_id, message_id, exc)
            await self._ack_unless_done(agent_id, message_id, unacked, handled=False)
        except Exception:
            log.exception("Agent %s failed on message %s; giving it back", agent_id, message_id)
            await self._ack_unless_done(agent_id, message_id, unacked, handled=False)
        else:
            await self._ack_unless_done(agent_id, message_id, unacked, handled=True)
        finally:
            if mine:
                del self._unacked[message_id]

    async def _ack_unless_done(
        self, agent_id: str, message_id: str, unacked: _Unacked, *, handled: bool
    ) -> None:
        if not unacked.acked:
            unacked.acked = True
            await self._ack(agent_id, message_id, handled=handled)

    async def _ack(self, agent_id: str, message_id: str, *, handled: bool) -> None:
        try:
            await self._hub.ack(agent_id, message_id, handled)
        except AgentError as exc:
            # Most likely the stream closed first and the server put the message back; its
            # redelivery is recognised by message_id and acked without handling it again.
            log.info("Could not ack message %s: %s", message_id, exc)

    async def publish(self, envelope: Envelope) -> None:
        agent_id = self._agent_id or envelope.sender_id or ""
        answered = self._answered_by(envelope)
        traceparent = "" if self._tracing is None else self._tracing.current_traceparent()
        if answered is None:
            await self._hub.send_message(agent_id, envelope, traceparent=traceparent)
            return
        # The final answer: the message is finished once it is accepted, so the ack goes with
        # it (the server applies it only after the answer was published).
        message_id, unacked = answered
        unacked.acked = True
        try:
            acked = await self._hub.send_message(
                agent_id, envelope, ack=message_id, traceparent=traceparent
            )
        except BaseException:
            unacked.acked = False  # not accepted: the message is given back as usual
            raise
        if not acked:
            # The answer is out but its ack was not applied (the ack call failed, or the stream
            # was being reopened): the ack goes out on its own once `handle` returns. Left
            # marked, the message would stay with this agent until its stream closes, and then
            # come back, charged an attempt, for an answer already given.
            unacked.acked = False

    def _answered_by(self, envelope: Envelope) -> tuple[str, _Unacked] | None:
        """The unacked message in hand that `envelope` is the final answer to, if any."""
        if envelope.message_type not in _FINAL_TYPES or not envelope.in_reply_to_message_id:
            return None
        message_id = envelope.in_reply_to_message_id
        unacked = self._unacked.get(message_id)
        if (
            unacked is None
            or unacked.acked
            or unacked.envelope_id != message_id
            or unacked.sender_id != envelope.receiver_id
        ):
            return None
        return message_id, unacked

    async def close(self) -> None:
        await self.wait_in_hand()


class BusWork:
    """Work straight from the bus: consume agent_queue_<id>, publish to broker_input_queue."""

    needs_registration = False

    def __init__(self, bus: Bus, prefetch: int, *, owns_bus: bool) -> None:
        # The server must know which: only an agent in its own process can share its
        # in-process bus, and only an agent on RabbitMQ can work beside a hub on RabbitMQ.
        self.name: TransportName = bus_transport(bus)
        self._bus = bus
        self._prefetch = prefetch
        self._owns_bus = owns_bus

    async def receive(self, agent_id: str, handle: Handle) -> None:
        async def deliver(delivery: Delivery) -> None:
            try:
                envelope = decode_envelope(delivery.body)
            except ProtocolError as exc:
                # Acked by returning: an unreadable message would never become readable.
                log.warning("Agent %s dropped an unreadable message: %s", agent_id, exc.text)
                return
            try:
                await handle(envelope)
            except (HubUnavailable, PublishFailed) as exc:
                # The bus went away under the handler: the message goes back uncounted and is
                # handled again once the connection is back.
                raise BusUnavailable(str(exc)) from None

        async def gave_up(delivery: Delivery) -> None:
            # Out of attempts (it kept failing, or kept taking the agent down with it): the
            # bus drops it, and its sender is told instead of waiting forever.
            try:
                envelope = decode_envelope(delivery.body)
            except ProtocolError:
                return
            if envelope.message_type is MessageType.TEXT and envelope.sender_id:
                await self.publish(
                    envelopes.error(
                        envelope,
                        agent_id,
                        ErrorCode.INTERNAL,
                        f"Agent {agent_id} could not handle this message: it was tried "
                        f"{delivery.attempt} times and given up.",
                    )
                )

        try:
            await self._bus.connect()
            # concurrency == prefetch: messages waiting for a handler slot must not hold up a
            # CANCEL behind them; the dispatcher bounds how many handlers really run.
            subscription = await self._bus.consume(
                agent_queue(agent_id),
                deliver,
                prefetch=self._prefetch,
                concurrency=self._prefetch,
                on_dead_letter=gave_up,
            )
        except Unroutable as exc:
            # The server declares the queue when the agent registers, so on the hub's bus it
            # exists: this agent would be listed online and never see a message.
            raise WrongBus(
                f"There is no {agent_queue(agent_id)} on the agent's bus, so it is not the "
                "hub's: point RABBITMQ_HOST and RABBITMQ_VHOST at the hub's RabbitMQ, or use "
                "--transport grpc."
            ) from exc
        except BusError as exc:
            raise HubUnavailable(f"Cannot consume {agent_queue(agent_id)}: {exc}") from exc
        try:
            # The bus restores its consumers after a reconnect by itself; this only ends when
            # the agent stops (and the subscription's cancel lets handlers in progress finish).
            await asyncio.get_running_loop().create_future()
        finally:
            await _cancel_subscription(subscription)

    async def publish(self, envelope: Envelope) -> None:
        queue = straight_queue(envelope)
        if queue is not None:
            try:
                # Transient: the final REPLY, persistent and confirmed, carries the whole text;
                # a chunk lost with a restarted RabbitMQ costs the frontend only that chunk.
                await self._bus.publish(
                    queue,
                    encode_for_bus(envelope),
                    message_id=envelope.message_id,
                    persistent=False,
                )
                return
            except Unroutable:
                pass  # that hub's queue is gone: the broker finds the frontend's way
            except BusError as exc:
                raise HubUnavailable(f"Cannot publish to {queue}: {exc}") from exc
        try:
            await self._bus.publish(
                BROKER_INPUT_QUEUE, encode_for_bus(envelope), message_id=envelope.message_id
            )
        except BusError as exc:
            raise HubUnavailable(f"Cannot publish to {BROKER_INPUT_QUEUE}: {exc}") from exc

    async def close(self) -> None:
        if self._owns_bus:
            await self._bus.close()


def straight_queue(envelope: Envelope) -> str | None:
    """Where a chunk of an answer to a frontend goes without a broker: the queue of the hub
    that holds the frontend (its id names the hub). The answer's route was decided when its
    TEXT was routed; each chunk needs no decision of its own, and the final answer still goes
    through the broker. None for everything else."""
    receiver = envelope.receiver_id or ""
    if envelope.message_type is not MessageType.REPLY_CHUNK or not is_frontend_id(receiver):
        return None
    tag = frontend_server_tag(receiver)
    return server_queue(tag) if tag else None


def bus_transport(bus: Bus) -> TransportName:
    """The transport of an agent consuming `bus`: memory for an in-process bus (the hub's own,
    shared in its process), else amqp."""
    # A traced bus (telemetry/bus.py) is judged by the bus it wraps.
    return "memory" if isinstance(getattr(bus, "inner", bus), InMemoryBus) else "amqp"


async def _cancel_subscription(subscription: Subscription) -> None:
    try:
        await subscription.cancel()
    except BusError as exc:
        log.warning("Could not cancel the bus consumer cleanly: %s", exc)


def choose_transport(transport: str | None, settings: Settings, bus: Bus | None) -> TransportName:
    """The bus given (amqp, or memory for an in-process one), else amqp with
    MESSAGE_BUS=rabbitmq and grpc otherwise; an explicit choice wins."""
    if transport is None:
        if bus is not None:
            return bus_transport(bus)
        return "amqp" if settings.message_bus == "rabbitmq" else "grpc"
    if transport == "grpc":
        if bus is not None:
            raise ValueError("bus= is only used with transport 'amqp'.")
        return "grpc"
    if transport == "amqp":
        if bus is None and settings.message_bus == "memory":
            raise ValueError(
                "transport 'amqp' with MESSAGE_BUS=memory needs the shared in-process bus "
                "passed as bus=...; a separate process must use transport 'grpc'."
            )
        return bus_transport(bus) if bus is not None else "amqp"
    raise ValueError(f"Unknown transport {transport!r}; use 'grpc' or 'amqp'.")
