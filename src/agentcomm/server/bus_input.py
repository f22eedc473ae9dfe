"""What the server does with each message it consumes from the bus, and what it announces there."""

from __future__ import annotations

import logging
from collections.abc import Callable

from agentcomm.bus.base import Bus, Delivery
from agentcomm.core.brokers import BrokerRegistry
from agentcomm.core.errors import HubError
from agentcomm.core.presence import AgentRegistry
from agentcomm.protocol.codec import (
    decode_envelope,
    encode_for_bus,
    message_type_of,
    parse_json_object,
    validate_model,
)
from agentcomm.protocol.errors import ProtocolError
from agentcomm.protocol.models import (
    ClientDisconnectedNotice,
    RegisterBrokerNotice,
    ServerAdvertisement,
)
from agentcomm.protocol.queues import SERVER_ADVERTISEMENT_QUEUE
from agentcomm.protocol.timestamps import utc_now_iso
from agentcomm.protocol.vocabulary import ClientType, MessageType
from agentcomm.server.routing import RouteRunner

log = logging.getLogger(__name__)


class BusInput:
    """The server's consumers: broker output, and notices on the metadata queue."""

    def __init__(
        self, router: RouteRunner, registry: AgentRegistry, brokers: BrokerRegistry
    ) -> None:
        self._router = router
        self._registry = registry
        self._brokers = brokers

    async def on_server_input(self, delivery: Delivery) -> None:
        """Broker output. Undecodable messages are logged once and dropped (acked): they
        would fail the same way on every redelivery."""
        try:
            message = decode_envelope(delivery.body)
        except ProtocolError as exc:
            log.warning(
                "Dropping malformed message %s on %s: %s",
                delivery.message_id,
                delivery.queue,
                exc.text,
            )
            return
        await self._router.handle_broker_output(message)

    async def on_metadata(self, delivery: Delivery) -> None:
        try:
            data = parse_json_object(delivery.body)
            message_type = message_type_of(data)
            if message_type is MessageType.REGISTER_BROKER:
                notice = validate_model(RegisterBrokerNotice, data)
                self._brokers.register(notice.broker_id, notice.broker_name, "bus")
                log.info("Broker %s registered via the bus", notice.broker_id)
            elif message_type is MessageType.CLIENT_DISCONNECTED:
                self._client_disconnected(validate_model(ClientDisconnectedNotice, data))
            else:
                log.warning("Ignoring %s on the metadata queue", message_type.value)
        except ProtocolError as exc:
            log.warning("Dropping malformed metadata notice %s: %s", delivery.message_id, exc.text)

    def _client_disconnected(self, notice: ClientDisconnectedNotice) -> None:
        if notice.client_type.lower() == ClientType.AGENT:
            try:
                self._registry.unregister(notice.client_id)
            except HubError:
                log.info("Disconnect notice for unknown agent %s", notice.client_id)
        elif notice.client_type.lower() == ClientType.BROKER:
            self._brokers.stream_closed(notice.client_id)
        else:
            log.info("Client %s (%s) disconnected", notice.client_id, notice.client_type)


class Advertiser:
    """SERVER_AVAILABLE while the server runs (at start and periodically), SERVER_UNAVAILABLE
    when it stops: where frontends and agents find it."""

    def __init__(
        self,
        bus: Bus,
        server_id: str,
        websocket_url: Callable[[], str],
        grpc_address: Callable[[], str],
    ) -> None:
        self._bus = bus
        self._server_id = server_id
        self._websocket_url = websocket_url
        self._grpc_address = grpc_address

    async def advertise_available(self) -> None:
        await self._advertise(MessageType.SERVER_AVAILABLE)

    async def advertise_unavailable(self) -> None:
        await self._advertise(MessageType.SERVER_UNAVAILABLE)

    async def _advertise(self, message_type: MessageType) -> None:
        advertisement = ServerAdvertisement(
            message_type=message_type,
            server_id=self._server_id,
            websocket_url=self._websocket_url(),
            grpc_address=self._grpc_address(),
            timestamp=utc_now_iso(),
        )
        await self._bus.publish(
            SERVER_ADVERTISEMENT_QUEUE,
            encode_for_bus(advertisement),
            message_id=advertisement.message_id,
            mandatory=False,
        )
