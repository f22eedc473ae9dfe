"""A port that cannot be had is one sentence naming the setting to change (server/listeners.py)."""

from __future__ import annotations

import errno
import socket

import pytest

from agentcomm.server.listeners import CannotListen, Listener, bind_http, check_free, refusal


@pytest.mark.parametrize(
    ("kind", "port_setting", "host_setting"),
    [("HTTP", "PORT", "HOST"), ("gRPC", "GRPC_PORT", "GRPC_HOST")],
)
def test_each_failure_names_the_setting_to_change(
    kind: Listener, port_setting: str, host_setting: str
) -> None:
    in_use = refusal(kind, "0.0.0.0", 8765, OSError(errno.EADDRINUSE, "Address already in use"))
    assert str(in_use) == (
        f"{kind} port 8765 on 0.0.0.0 is in use (another agentcomm?): set "
        f"{port_setting}=<another port>, or {port_setting}=0 for any free port."
    )
    privileged = refusal(kind, "0.0.0.0", 80, OSError(errno.EACCES, "Permission denied"))
    assert f"set {port_setting}=<a port above 1023>" in str(privileged)
    elsewhere = refusal(
        kind,
        "10.255.0.9",
        8765,
        OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address"),
    )
    assert "(Cannot assign requested address)" in str(elsewhere)
    assert f"set {host_setting} to an address of this machine" in str(elsewhere)
    for error in (in_use, privileged, elsewhere):
        assert "\n" not in str(error)


def test_a_taken_port_is_found_before_grpc_tries_it() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(CannotListen, match=f"gRPC port {port} on 127.0.0.1 is in use"):
            check_free("gRPC", "127.0.0.1", port)
        with pytest.raises(CannotListen, match=f"HTTP port {port} on 127.0.0.1 is in use"):
            bind_http("127.0.0.1", port)


def test_a_free_port_and_port_zero_pass() -> None:
    check_free("gRPC", "127.0.0.1", 0)
    listener = bind_http("127.0.0.1", 0)
    try:
        port = listener.getsockname()[1]
    finally:
        listener.close()
    check_free("gRPC", "127.0.0.1", port)
