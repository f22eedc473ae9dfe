"""The gRPC server: the three services, health and reflection, on a port it does not share."""

from __future__ import annotations

from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from agentcomm.config import Settings
from agentcomm.generated import agent_registration_service_pb2 as registration_pb
from agentcomm.generated import agent_registration_service_pb2_grpc as registration_grpc
from agentcomm.generated import agent_status_service_pb2 as status_pb
from agentcomm.generated import agent_status_service_pb2_grpc as status_grpc
from agentcomm.generated import broker_registration_service_pb2 as broker_pb
from agentcomm.generated import broker_registration_service_pb2_grpc as broker_grpc
from agentcomm.grpc_channel import REQUEST_BYTES_ACCEPTED
from agentcomm.server.grpc.agents import AgentRegistrationServicer
from agentcomm.server.grpc.brokers import BrokerRegistrationServicer
from agentcomm.server.grpc.expiry import EndStreamsAtTokenExpiry
from agentcomm.server.grpc.malformed import RejectMalformedRequests
from agentcomm.server.grpc.parts import GrpcParts
from agentcomm.server.grpc.status import AgentStatusServicer
from agentcomm.server.listeners import CannotListen, check_free

SERVICE_NAMES = (
    registration_pb.DESCRIPTOR.services_by_name["AgentRegistrationService"].full_name,
    status_pb.DESCRIPTOR.services_by_name["AgentStatusService"].full_name,
    broker_pb.DESCRIPTOR.services_by_name["BrokerRegistrationService"].full_name,
)


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS from GRPC_TLS_CERT/KEY; with GRPC_TLS_CLIENT_CA, clients must present a certificate
    signed by that CA (mTLS). None: plain gRPC."""
    if not settings.grpc_tls_cert and not settings.grpc_tls_key:
        return None
    if not (settings.grpc_tls_cert and settings.grpc_tls_key):
        raise OSError("GRPC_TLS_CERT and GRPC_TLS_KEY must be set together.")
    client_ca = (
        Path(settings.grpc_tls_client_ca).read_bytes() if settings.grpc_tls_client_ca else None
    )
    return grpc.ssl_server_credentials(
        [(Path(settings.grpc_tls_key).read_bytes(), Path(settings.grpc_tls_cert).read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


class GrpcListener:
    """The gRPC server with its port taken and its services added, not yet serving: the port
    is taken before anything else of the hub starts (server/listeners.py), the calls are
    answered once `start()` ran."""

    def __init__(self, parts: GrpcParts) -> None:
        settings = parts.settings
        # A taken port says so in a sentence, before gRPC's own bind only logs that it failed.
        check_free("gRPC", settings.grpc_host, settings.grpc_port)
        self.server = grpc.aio.server(
            interceptors=[RejectMalformedRequests(), EndStreamsAtTokenExpiry(parts.auth)],
            options=_server_options(parts),
        )
        registration_grpc.add_AgentRegistrationServiceServicer_to_server(
            AgentRegistrationServicer(parts), self.server
        )
        status_grpc.add_AgentStatusServiceServicer_to_server(
            AgentStatusServicer(parts.auth, parts.cluster, parts.brokers), self.server
        )
        broker_grpc.add_BrokerRegistrationServiceServicer_to_server(
            BrokerRegistrationServicer(parts.auth, parts.brokers), self.server
        )
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self.server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        address = f"{settings.grpc_host}:{settings.grpc_port}"
        credentials = server_credentials(settings)
        try:
            if credentials is None:
                self.port = self.server.add_insecure_port(address)
            else:
                self.port = self.server.add_secure_port(address, credentials)
        except RuntimeError:
            self.port = 0  # newer gRPC raises where older returned 0
        if self.port == 0:
            # Taken between the check and now, or refused for a reason the check did not meet.
            raise CannotListen(
                f"gRPC cannot listen on {address}: set GRPC_PORT=<another port>, or "
                "GRPC_PORT=0 for any free port."
            )

    async def start(self) -> None:
        await self.server.start()
        for name in ("", *SERVICE_NAMES):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)


def _server_options(parts: GrpcParts) -> list[tuple[str, int]]:
    # The transport's limit is well above MAX_MESSAGE_BYTES, which each call checks per
    # envelope: an envelope too large then gets a clear refusal of its own (on SendOutputs, of
    # its item alone), where a request over this limit ends its call, and with it every other
    # item on the stream. It still bounds what one request makes the server hold.
    request_limit = 4 * parts.settings.max_message_bytes + REQUEST_BYTES_ACCEPTED
    return [
        ("grpc.max_receive_message_length", request_limit),
        # No cap on what the server sends: the full agent list grows with the number of
        # agents, and operator commands are bounded by the HTTP API, not by this limit.
        ("grpc.max_send_message_length", -1),
        # Notice dead agent connections (and so broken streams) within about 15 s: a ping
        # after 10 s without traffic, 5 s for its answer. This gRPC applies its generic ping
        # timeout (60 s by default) to keepalive pings too, so that is set as well.
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.http2.ping_timeout_ms", 5_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
        # Agents and brokers ping as often themselves (grpc_channel.CLIENT_KEEPALIVE).
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
        # gRPC shares ports by default (SO_REUSEPORT): a second hub on the same port would
        # start without a word and take half of the first one's agents and brokers.
        ("grpc.so_reuseport", 0),
    ]
