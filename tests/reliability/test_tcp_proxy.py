"""The fault-injection proxy itself: it forwards, slows, black-holes, resets and refuses."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from tests.support.tcp_proxy import TcpProxy

TIMEOUT = 5.0


@contextlib.asynccontextmanager
async def echo_server() -> AsyncIterator[int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(1024):
                writer.write(data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def roundtrip(port: int, payload: bytes = b"ping", *, timeout: float = TIMEOUT) -> bytes:
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(payload)
            await writer.drain()
            return await reader.readexactly(len(payload))
        finally:
            writer.close()


async def test_passes_bytes_both_ways() -> None:
    async with echo_server() as port, TcpProxy("127.0.0.1", port) as proxy:
        assert await roundtrip(proxy.port) == b"ping"
        assert proxy.accepted == 1


async def test_slow_delays_each_chunk() -> None:
    async with echo_server() as port, TcpProxy("127.0.0.1", port) as proxy:
        proxy.slow(0.2)
        began = time.monotonic()
        assert await roundtrip(proxy.port) == b"ping"
        # One delay on the way there and one on the way back.
        assert time.monotonic() - began >= 0.4


async def test_blackhole_forwards_nothing_until_it_heals() -> None:
    async with echo_server() as port, TcpProxy("127.0.0.1", port) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            writer.write(b"a")
            assert await asyncio.wait_for(reader.readexactly(1), TIMEOUT) == b"a"
            proxy.blackhole()
            writer.write(b"b")
            await writer.drain()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(reader.readexactly(1), 0.3)
            # New connections are accepted, and go nowhere either.
            with pytest.raises(TimeoutError):
                await roundtrip(proxy.port, timeout=0.3)
            proxy.passthrough()
            assert await asyncio.wait_for(reader.readexactly(1), TIMEOUT) == b"b"
        finally:
            writer.close()


async def test_reset_cuts_open_connections_and_new_ones_work() -> None:
    async with echo_server() as port, TcpProxy("127.0.0.1", port) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"a")
        assert await asyncio.wait_for(reader.readexactly(1), TIMEOUT) == b"a"
        assert proxy.reset() == 1
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            async with asyncio.timeout(TIMEOUT):
                await reader.readexactly(1)
        writer.close()
        assert await roundtrip(proxy.port) == b"ping"


async def test_refuse_resets_new_connections() -> None:
    async with echo_server() as port, TcpProxy("127.0.0.1", port) as proxy:
        proxy.refuse()
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await roundtrip(proxy.port)
        proxy.passthrough()
        assert await roundtrip(proxy.port) == b"ping"
