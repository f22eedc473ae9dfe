"""BrokerRegistrationService: brokers announce themselves; their status is tracked."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import grpc

from agentcomm.core.auth import Role
from agentcomm.generated import broker_registration_service_pb2 as pb
from agentcomm.generated import broker_registration_service_pb2_grpc as pb_grpc
from agentcomm.protocol.models import MAX_NAME_CHARS
from agentcomm.server.grpc_context import Context, authorize, require_id

if TYPE_CHECKING:
    from agentcomm.server.hub import Hub

log = logging.getLogger(__name__)


class BrokerRegistrationServicer(pb_grpc.BrokerRegistrationServiceServicer):
    def __init__(self, hub: Hub) -> None:
        self._hub = hub

    async def RegisterBroker(
        self, request: pb.BrokerRegistrationRequest, context: Context
    ) -> pb.BrokerRegistrationResponse:
        await require_id(context, request.broker_id, "broker_id")
        await authorize(self._hub.auth, context, Role.BROKER, request.broker_id)
        if len(request.broker_name) > MAX_NAME_CHARS:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"broker_name may have at most {MAX_NAME_CHARS} characters.",
            )
        record = self._hub.brokers.register(request.broker_id, request.broker_name, "grpc")
        log.info("Broker %s (%s) registered", record.broker_id, record.broker_name)
        return pb.BrokerRegistrationResponse(
            success=True, message=f"Broker {record.broker_id} registered."
        )
