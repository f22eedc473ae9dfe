"""Frontends as a browser would be one: real WebSocket clients that register and chat.

`Frontends` opens N registered sockets to the hub and is a load-generation target: each round
trip sends a TEXT to the echo agent and returns when its REPLY arrives. Only frames that can end
a round trip (REPLY, ERROR) are decoded; status echoes and presence are merely counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from agentcomm.bench.loadgen import ROUNDTRIP_TIMEOUT
from agentcomm.bench.procs import BenchError

CONNECT_TIMEOUT = 30.0


class RoundTripFailed(Exception):
    """The hub answered a TEXT with an ERROR."""


FrameHook = Callable[[int, str, float], None]


class Frontend:
    """One registered socket."""

    def __init__(self, index: int, ws: ClientConnection, owner: Frontends) -> None:
        self.index = index
        self.ws = ws
        self.frontend_id = ""
        self._owner = owner
        self._reader: asyncio.Task[None] | None = None

    async def register(self, name: str) -> None:
        frame: dict[str, Any] = {"message_type": "REGISTER_FRONTEND", "frontend_name": name}
        if self._owner.capabilities:
            frame["capabilities"] = self._owner.capabilities
        await self.ws.send(orjson.dumps(frame).decode())
        response = orjson.loads(await self.ws.recv())
        if response.get("message_type") != "REGISTER_FRONTEND_RESPONSE":
            raise BenchError(f"Registration refused: {response}")
        self.frontend_id = str(response["frontend_id"])
        status = orjson.loads(await self.ws.recv())
        if status.get("message_type") != "AGENT_STATUS_UPDATE":
            raise BenchError(f"Expected the agent list after registering, got {status}")
        self._reader = asyncio.create_task(self._read(), name=f"frontend-{self.index}")

    async def _read(self) -> None:
        owner = self._owner
        with contextlib.suppress(ConnectionClosed):
            async for frame in self.ws:
                text = frame if isinstance(frame, str) else frame.decode()
                owner.frames += 1
                hook = owner.on_frame
                if hook is not None:
                    hook(self.index, text, time.perf_counter())
                if '"REPLY"' in text or '"ERROR"' in text:
                    owner.answered(text)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2):
                await self.ws.close()


class Frontends:
    """N registered frontends on one hub, and the round-trip target over them."""

    def __init__(
        self,
        ws_url: str,
        *,
        receiver_id: str = "echo",
        payload: str = "x",
        compression: bool = True,
        capabilities: dict[str, Any] | None = None,
    ) -> None:
        self.ws_url = ws_url
        # {"stream": True}: the REPLY_CHUNKs of streamed replies come too.
        self.capabilities = capabilities
        # Browsers offer permessage-deflate, so by default the frontends do too.
        self.compression = compression
        self.receiver_id = receiver_id
        self.payload = payload
        self.sockets: list[Frontend] = []
        self.frames = 0
        self.on_frame: FrameHook | None = None
        self._waiting: dict[str, asyncio.Future[None]] = {}
        self._ids = itertools.count()
        self._prefix = f"b{time.time_ns() % 10**9:x}-"

    @property
    def slots(self) -> int:
        return len(self.sockets)

    async def open(self, count: int, *, concurrency: int = 64, name: str = "bench") -> None:
        """Opens and registers `count` more sockets, `concurrency` handshakes at a time."""
        gate = asyncio.Semaphore(concurrency)
        first = len(self.sockets)

        async def one(index: int) -> Frontend:
            async with gate:
                ws = await connect(
                    self.ws_url,
                    open_timeout=CONNECT_TIMEOUT,
                    close_timeout=2,
                    ping_interval=None,
                    max_queue=None,
                    compression="deflate" if self.compression else None,
                )
                frontend = Frontend(index, ws, self)
                try:
                    async with asyncio.timeout(CONNECT_TIMEOUT):
                        await frontend.register(f"{name}-{index}")
                except BaseException:
                    await frontend.close()
                    raise
                return frontend

        tasks = [asyncio.create_task(one(first + i)) for i in range(count)]
        try:
            opened = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for result in results:
                if isinstance(result, Frontend):
                    await result.close()
            raise
        self.sockets.extend(opened)

    async def close(self) -> None:
        sockets, self.sockets = self.sockets, []
        for start in range(0, len(sockets), 500):
            await asyncio.gather(*(s.close() for s in sockets[start : start + 500]))
        for waiter in self._waiting.values():
            waiter.cancel()
        self._waiting.clear()

    def answered(self, text: str) -> None:
        data: dict[str, Any] = orjson.loads(text)
        kind = data.get("message_type")
        if kind not in ("REPLY", "ERROR"):
            return
        waiter = self._waiting.pop(str(data.get("in_reply_to_message_id")), None)
        if waiter is None or waiter.done():
            return
        if kind == "REPLY":
            waiter.set_result(None)
        else:
            waiter.set_exception(
                RoundTripFailed(f"{data.get('error_code')}: {data.get('text_payload')}")
            )

    async def roundtrip(self, slot: int) -> None:
        message_id = f"{self._prefix}{next(self._ids)}"
        frame = orjson.dumps(
            {
                "message_type": "TEXT",
                "message_id": message_id,
                "receiver_id": self.receiver_id,
                "text_payload": self.payload,
            }
        ).decode()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[message_id] = waiter
        try:
            async with asyncio.timeout(ROUNDTRIP_TIMEOUT):
                await self.sockets[slot].ws.send(frame)
                await waiter
        finally:
            self._waiting.pop(message_id, None)

    async def wait_until_answering(self, timeout: float) -> None:
        """Round trips until one succeeds (the broker may not know the agent yet)."""
        last: BaseException | None = None
        try:
            async with asyncio.timeout(timeout):
                while True:
                    try:
                        await self.roundtrip(0)
                        return
                    except (RoundTripFailed, TimeoutError) as exc:
                        last = exc
                    await asyncio.sleep(0.2)
        except TimeoutError:
            raise BenchError(
                f"No round trip succeeded within {timeout:.0f} s (last: {last!r})."
            ) from None
