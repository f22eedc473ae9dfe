"""A lean HTTP/1.1 client for the a2a benchmark: keep-alive connections, one request at a time
on each, bodies by Content-Length or chunked (server-sent events).

httpx spent about 6 ms of the harness's CPU on each A2A round trip, more than the hub it
measured, on a machine the harness shares with the hub; the WebSocket side's client costs a
tenth of a millisecond. This one does only what the benchmark sends and reads, so that both
sides are driven by clients of about the same cost.
"""

from __future__ import annotations

import asyncio

from agentcomm.bench.procs import BenchError


class HttpFailed(Exception):
    """A response that is not 200, or one that does not parse."""


class RawHttp:
    """A pool of keep-alive connections to one host; `post` waits for a free one."""

    def __init__(self, host: str, port: int, connections: int, headers: dict[str, str]) -> None:
        self._host = host
        self._port = port
        self._size = connections
        self._head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self._free: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.Queue()
        )
        self._all: list[asyncio.StreamWriter] = []

    async def open(self) -> None:
        for _ in range(self._size):
            try:
                reader, writer = await asyncio.open_connection(self._host, self._port)
            except OSError as exc:
                raise BenchError(f"Cannot connect to {self._host}:{self._port}: {exc}") from exc
            self._all.append(writer)
            self._free.put_nowait((reader, writer))

    async def close(self) -> None:
        for writer in self._all:
            writer.close()
        self._all.clear()

    async def post(self, path: str, body: bytes) -> bytes:
        """The whole response body. A connection the server closed while it was idle (its
        keep-alive timeout) is opened again, and the request sent on the new one."""
        request = (
            f"POST {path} HTTP/1.1\r\nHost: {self._host}\r\n{self._head}"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        reader, writer = await self._free.get()
        try:
            if reader.at_eof():
                reader, writer = await self._reopen(writer)
            writer.write(request)
            try:
                return await _response(reader)
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    raise
                # Closed just as the request went out: nothing of it was answered.
                reader, writer = await self._reopen(writer)
                writer.write(request)
                return await _response(reader)
        except BaseException:
            reader, writer = await self._reopen(writer)
            raise
        finally:
            self._free.put_nowait((reader, writer))

    async def _reopen(
        self, old: asyncio.StreamWriter
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        old.close()
        if old in self._all:
            self._all.remove(old)
        reader, writer = await asyncio.open_connection(self._host, self._port)
        self._all.append(writer)
        return reader, writer


async def _response(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    status = head[9:12]
    length: int | None = None
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        parts: list[bytes] = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            parts.append(chunk[:-2])
        body = b"".join(parts)
    else:
        body = await reader.readexactly(length or 0)
    if status != b"200":
        raise HttpFailed(f"HTTP {status.decode()}: {body[:200]!r}")
    return body
