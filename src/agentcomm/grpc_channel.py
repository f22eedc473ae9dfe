"""Client channels to the hub's gRPC port: a token on every call when one is set, TLS when
configured."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from agentcomm.config import Settings

ChannelOptions = Sequence[tuple[str, Any]]

# A connection that stops answering is closed, and its calls and streams fail, within about
# 15 s: a ping after 10 s without traffic, 5 s for its answer. (This gRPC applies its generic
# ping timeout, 60 s by default, to keepalive pings too, so it is set as well.) The server
# accepts pings this often (server/grpc/server.py).
CLIENT_KEEPALIVE: ChannelOptions = (
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.ping_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
)

# Every hub accepts gRPC requests of at least this size, whatever its MAX_MESSAGE_BYTES
# (server/grpc/server.py): a client that puts several items in one request keeps it within this, and
# a request over the hub's limit ends its whole stream, not just the item that made it large.
REQUEST_BYTES_ACCEPTED = 64 * 1024

# What a client takes in one response. gRPC's default, 4 MiB, is below what the hub may send in
# one: a batch of messages (up to 1 MiB, server/grpc/inboxes.py) or a single message of a hub
# configured for larger ones; a response over it would fail the stream it came on, and again on
# every redelivery.
CLIENT_MAX_RECEIVE_BYTES = 64 * 1024 * 1024
_MAX_RECEIVE = "grpc.max_receive_message_length"


def _with_token(details: grpc.aio.ClientCallDetails, header: tuple[str, str]) -> Any:
    return grpc.aio.ClientCallDetails(
        details.method,
        details.timeout,
        grpc.aio.Metadata(*(details.metadata or ()), header),
        details.credentials,
        details.wait_for_ready,
    )


# grpc.aio files each interceptor under one call kind only, so unary and streaming calls need
# an interceptor object each.
class _UnaryBearer(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, header: tuple[str, str]) -> None:
        self._header = header

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(_with_token(client_call_details, self._header), request)


class _StreamBearer(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, header: tuple[str, str]) -> None:
        self._header = header

    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(_with_token(client_call_details, self._header), request)


@dataclass(frozen=True)
class ClientTls:
    """What a client needs to talk TLS (and mTLS) to the hub's gRPC port."""

    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> ClientTls | None:
        """None when GRPC_TLS_CA is unset: the hub is reached without TLS."""
        if not settings.grpc_tls_ca:
            return None
        return cls(
            root_certificates=Path(settings.grpc_tls_ca).read_bytes(),
            certificate_chain=_read(settings.grpc_tls_client_cert),
            private_key=_read(settings.grpc_tls_client_key),
        )

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            self.root_certificates, self.private_key, self.certificate_chain
        )


def _read(path: str) -> bytes | None:
    return Path(path).read_bytes() if path else None


def open_channel(
    target: str,
    *,
    token: str = "",
    options: ChannelOptions = (),
    tls: ClientTls | None = None,
) -> grpc.aio.Channel:
    """A channel to the hub: `authorization: Bearer <token>` on every call when a token is
    given, TLS when `tls` is given, and a receive limit of CLIENT_MAX_RECEIVE_BYTES unless
    `options` name another."""
    if not any(name == _MAX_RECEIVE for name, _ in options):
        options = (*options, (_MAX_RECEIVE, CLIENT_MAX_RECEIVE_BYTES))
    header = ("authorization", f"Bearer {token}")
    interceptors: list[Any] | None = (
        [_UnaryBearer(header), _StreamBearer(header)] if token else None
    )
    if tls is not None:
        return grpc.aio.secure_channel(
            target, tls.credentials(), options=list(options), interceptors=interceptors
        )
    return grpc.aio.insecure_channel(target, options=list(options), interceptors=interceptors)
