"""The hub's listening ports, taken before anything else starts.

Exceptions:

    OSError
    └── CannotListen   a listen address cannot be taken; the one-line message names the setting
                       to change (PORT, HOST, GRPC_PORT, GRPC_HOST)

A taken port must stop a start before the bus is connected, the broker registered or any agent
started: a second hub that went on with half of its ports would register its broker with the
first hub, and be found out only later, as something else. So both ports are taken first (the
HTTP socket is bound here and handed to uvicorn later; the gRPC port is bound by gRPC itself,
without port sharing, after `check_free` looked at it with a plain socket, whose error says what
gRPC's would not).
"""

from __future__ import annotations

import contextlib
import errno
import socket
from typing import Literal

Listener = Literal["HTTP", "gRPC"]

# The settings that choose each listener's port and address.
_SETTINGS: dict[Listener, tuple[str, str]] = {
    "HTTP": ("PORT", "HOST"),
    "gRPC": ("GRPC_PORT", "GRPC_HOST"),
}


class CannotListen(OSError):
    """A listen address cannot be taken; the message is one sentence naming what to change."""


def refusal(kind: Listener, host: str, port: int, error: OSError) -> CannotListen:
    """The sentence for `error` met while taking `host:port` for `kind`."""
    port_setting, host_setting = _SETTINGS[kind]
    if error.errno == errno.EADDRINUSE:
        text = (
            f"{kind} port {port} on {host} is in use (another agentcomm?): set "
            f"{port_setting}=<another port>, or {port_setting}=0 for any free port."
        )
    elif error.errno == errno.EACCES:
        text = (
            f"{kind} port {port} on {host} needs privileges (it is below 1024): set "
            f"{port_setting}=<a port above 1023>, or {port_setting}=0 for any free port."
        )
    else:
        reason = error.strerror or str(error)
        text = (
            f"{kind} cannot listen on {host}:{port} ({reason}): set {host_setting} to an "
            "address of this machine (0.0.0.0 for all of them, 127.0.0.1 for this one only)."
        )
    return CannotListen(text)


def bind_http(host: str, port: int) -> socket.socket:
    """A listening socket for HTTP; raises CannotListen when it cannot be had."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            _unbracketed(host), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        listener = socket.socket(family, kind, proto)
    except OSError as exc:
        raise refusal("HTTP", host, port, exc) from None
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(2048)
    except OSError as exc:
        listener.close()
        raise refusal("HTTP", host, port, exc) from None
    listener.setblocking(False)
    return listener


def check_free(kind: Listener, host: str, port: int) -> None:
    """Raises CannotListen when `host:port` is taken on any address it names.

    gRPC only says "Failed to bind" (and logs a line of its own), whatever the reason; a plain
    bind with the same options says why. It is released at once, for gRPC to take a moment
    later. Port 0 (any free port) is never taken.
    """
    if port == 0:
        return
    try:
        addresses = socket.getaddrinfo(
            _unbracketed(host), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError as exc:
        raise refusal(kind, host, port, exc) from None
    for family, sock_type, proto, _, address in addresses:
        with contextlib.closing(socket.socket(family, sock_type, proto)) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRNOTAVAIL and len(addresses) > 1:
                    continue  # e.g. ::1 on a machine without IPv6: gRPC skips it too
                raise refusal(kind, host, port, exc) from None


def _unbracketed(host: str) -> str | None:
    # gRPC takes "[::]" as an IPv6 address; getaddrinfo takes it bare. Empty: every address.
    return host.strip("[]") or None
