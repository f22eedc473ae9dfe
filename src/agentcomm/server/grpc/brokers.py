"""BrokerRegistrationService: brokers announce themselves; their status is tracked."""

from __future__ import annotations

import logging

import grpc

from agentcomm.core.auth import Authenticator, Role
from agentcomm.core.brokers import BrokerRegistry
from agentcomm.generated import broker_registration_service_pb2 as pb
from agentcomm.generated import broker_registration_service_pb2_grpc as pb_grpc
from agentcomm.protocol.models import MAX_NAME_CHARS
from agentcomm.server.grpc.context import Context, authorize, require_id

log = logging.getLogger(__name__)


class BrokerRegistrationServicer(pb_grpc.BrokerRegistrationServiceServicer):
    def __init__(self, auth: Authenticator, brokers: BrokerRegistry) -> None:
        self._auth = auth
        self._brokers = brokers

    async def RegisterBroker(
        self, request: pb.BrokerRegistrationRequest, context: Context
    ) -> pb.BrokerRegistrationResponse:
        await require_id(context, request.broker_id, "broker_id")
        await authorize(self._auth, context, Role.BROKER, request.broker_id)
        if len(request.broker_name) > MAX_NAME_CHARS:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"broker_name may have at most {MAX_NAME_CHARS} characters.",
            )
        record = self._brokers.register(request.broker_id, request.broker_name, "grpc")
        log.info("Broker %s (%s) registered", record.broker_id, record.broker_name)
        return pb.BrokerRegistrationResponse(
            success=True, message=f"Broker {record.broker_id} registered."
        )
