"""What the server does with each message it consumes from the bus, and what it announces."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from agentcomm.bus.base import Delivery
from agentcomm.core.errors import HubError
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

if TYPE_CHECKING:
    from agentcomm.server.hub import Hub

log = logging.getLogger(__name__)


class BusHandlers:
    def __init__(self, hub: Hub) -> None:
        self._hub = hub

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
        await self._hub.router.handle_broker_output(message)

    async def on_metadata(self, delivery: Delivery) -> None:
        try:
            data = parse_json_object(delivery.body)
            message_type = message_type_of(data)
            if message_type is MessageType.REGISTER_BROKER:
                notice = validate_model(RegisterBrokerNotice, data)
                self._hub.brokers.register(notice.broker_id, notice.broker_name, "bus")
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
                self._hub.registry.unregister(notice.client_id)
            except HubError:
                log.info("Disconnect notice for unknown agent %s", notice.client_id)
        elif notice.client_type.lower() == ClientType.BROKER:
            self._hub.brokers.stream_closed(notice.client_id)
        else:
            log.info("Client %s (%s) disconnected", notice.client_id, notice.client_type)

    async def advertise_available(self) -> None:
        await self._advertise(MessageType.SERVER_AVAILABLE)

    async def advertise_unavailable(self) -> None:
        await self._advertise(MessageType.SERVER_UNAVAILABLE)

    async def _advertise(self, message_type: MessageType) -> None:
        hub = self._hub
        advertisement = ServerAdvertisement(
            message_type=message_type,
            server_id=hub.server_id,
            websocket_url=hub.public_websocket_url,
            grpc_address=f"{hub.settings.grpc_host}:{hub.grpc_port}",
            timestamp=utc_now_iso(),
        )
        await hub.bus.publish(
            SERVER_ADVERTISEMENT_QUEUE,
            encode_for_bus(advertisement),
            message_id=advertisement.message_id,
            mandatory=False,
        )
