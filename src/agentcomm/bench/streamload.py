"""Streamed answers as frontends see them: who asked, when each token arrived, in what order.

`StreamFrontends` opens N lean sockets (`rawws.RawFrontend`, registered with
`capabilities.stream`) and asks the streamer agent for answers; each `ask` returns an
`Answer`: when the TEXT left, when each chunk arrived and how many tokens it carried (counted
by their spaces, see `streamer.py`, so merged chunks count every token they hold), whether the
chunks came in `seq` order without a gap, and when the final REPLY came. `FloorStreams` is the
same load on the floor's bare relay (`floor.py`): the origin publishes each token as a
persistent, confirmed message, one after the other per answer as the SDK sends chunks, a relay
moves it to a second queue (the broker's hop) and the origin consumes that (the server's end).
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import aio_pika
import orjson
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection

from agentcomm.bench.floor import CONTENT_TYPE, connect_with_empty_queues
from agentcomm.bench.procs import BenchError
from agentcomm.bench.rawws import RawFrontend, close_frontends

CONNECT_TIMEOUT = 30.0


class AnswerFailed(Exception):
    """An answer ended in an ERROR, broke its chunk order, or did not finish in time."""


@dataclass(slots=True)
class Answer:
    """One streamed answer as its frontend saw it (times from time.perf_counter)."""

    tokens: int
    per_s: float
    sent: float = 0.0
    # (arrival, tokens carried) per chunk frame, in arrival order.
    chunks: list[tuple[float, int]] = field(default_factory=list)
    next_seq: int = 0
    out_of_order: int = 0
    final: float | None = None
    error: str | None = None

    @property
    def first_token_s(self) -> float | None:
        return self.chunks[0][0] - self.sent if self.chunks else None

    def token_times(self) -> list[float]:
        """The arrival time of every token, in order."""
        times: list[float] = []
        for arrived, count in self.chunks:
            times.extend([arrived] * count)
        return times

    def gaps(self) -> list[float]:
        """Seconds between consecutive chunk frames (what a reader waits between updates)."""
        return [b[0] - a[0] for a, b in itertools.pairwise(self.chunks)]

    def lateness(self) -> list[float]:
        """How much later than its schedule each token arrived, the schedule anchored on the
        first token's arrival: token i is due `i / per_s` after it. This is the delay the hub
        added between tokens, and it grows without bound when the hub falls behind."""
        times = self.token_times()
        if not times or self.per_s <= 0:
            return []
        first = times[0]
        return [max(0.0, t - (first + i / self.per_s)) for i, t in enumerate(times)]


class _StreamSocket(RawFrontend):
    """A lean frontend that registers for streamed replies."""

    def register(self, name: str) -> None:
        self.send_text(
            orjson.dumps(
                {
                    "message_type": "REGISTER_FRONTEND",
                    "frontend_name": name,
                    "capabilities": {"stream": True, "delivered_echo": False},
                }
            )
        )


class StreamFrontends:
    """N registered sockets asking the streamer agent for answers."""

    def __init__(self, port: int, receiver_id: str) -> None:
        self.port = port
        self.receiver_id = receiver_id
        self.sockets: list[_StreamSocket] = []
        self.frames = 0
        self._answers: dict[str, tuple[Answer, asyncio.Future[None]]] = {}
        self._ids = itertools.count()
        self._prefix = f"s{uuid.uuid4().hex[:6]}-"

    @property
    def slots(self) -> int:
        return len(self.sockets)

    async def open(self, count: int, *, concurrency: int = 100) -> None:
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(concurrency)
        first = len(self.sockets)

        async def one(index: int) -> None:
            async with gate:
                _, socket = await loop.create_connection(
                    lambda: _StreamSocket("127.0.0.1", self.port, self._arrived),
                    "127.0.0.1",
                    self.port,
                )
                self.sockets.append(socket)
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    await socket.upgraded
                    socket.register(f"stream-{index}")
                    await socket.registered

        await asyncio.gather(*(one(first + i) for i in range(count)))

    async def close(self) -> None:
        sockets, self.sockets = self.sockets, []
        await close_frontends(list(sockets))
        for _, waiter in self._answers.values():
            waiter.cancel()
        self._answers.clear()

    def _arrived(self, socket: RawFrontend, payload: bytes, now: float) -> None:
        self.frames += 1
        if b'"REPLY' not in payload and b'"ERROR"' not in payload:
            return  # status echoes, presence
        data = orjson.loads(payload)
        kind = data.get("message_type")
        if kind not in ("REPLY_CHUNK", "REPLY", "ERROR"):
            return
        key = str(data.get("in_reply_to_message_id"))
        entry = self._answers.get(key)
        if entry is None:
            return
        answer, waiter = entry
        if kind == "REPLY_CHUNK":
            if data.get("seq") != answer.next_seq:
                answer.out_of_order += 1
            answer.next_seq = int(data.get("seq") or 0) + 1
            answer.chunks.append((now, str(data.get("text_delta") or "").count(" ")))
            return
        if kind == "ERROR":
            answer.error = f"{data.get('error_code')}: {data.get('text_payload')}"
        answer.final = now
        self._answers.pop(key, None)
        if not waiter.done():
            waiter.set_result(None)

    async def ask(self, slot: int, tokens: int, per_s: float, timeout: float) -> Answer:
        """One answer on socket `slot`; returns it finished (or raises AnswerFailed)."""
        message_id = f"{self._prefix}{next(self._ids)}"
        answer = Answer(tokens, per_s)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._answers[message_id] = (answer, waiter)
        frame = orjson.dumps(
            {
                "message_type": "TEXT",
                "message_id": message_id,
                "receiver_id": self.receiver_id,
                "text_payload": f"{tokens} {per_s:g}",
            }
        )
        answer.sent = time.perf_counter()
        try:
            self.sockets[slot].send_text(frame)
            async with asyncio.timeout(timeout):
                await waiter
        except TimeoutError:
            raise AnswerFailed(
                f"answer {message_id} did not finish within {timeout:.0f} s "
                f"({sum(c for _, c in answer.chunks)} of {tokens} tokens)"
            ) from None
        finally:
            self._answers.pop(message_id, None)
        if answer.error is not None:
            raise AnswerFailed(answer.error)
        return answer

    async def wait_until_answering(self, timeout: float) -> None:
        last: BaseException | None = None
        try:
            async with asyncio.timeout(timeout):
                while True:
                    try:
                        await self.ask(0, 2, 0, 5.0)
                        return
                    except AnswerFailed as exc:
                        last = exc
                    await asyncio.sleep(0.2)
        except TimeoutError:
            raise BenchError(
                f"No streamed answer within {timeout:.0f} s (last: {last!r})."
            ) from None


class FloorStreams:
    """The floor of a streamed answer: its tokens over the same two RabbitMQ hops (agent →
    broker_input_queue → broker → server_input_queue → server) with nothing else."""

    def __init__(self, url: str, queues: Sequence[str], chunk_bytes: int, prefetch: int) -> None:
        self.url = url
        self.queues = list(queues)
        self.chunk_bytes = chunk_bytes
        self.prefetch = prefetch
        self._connection: AbstractRobustConnection | None = None
        self._publish: AbstractChannel | None = None
        self._consume: AbstractChannel | None = None
        self._answers: dict[str, tuple[Answer, asyncio.Future[None]]] = {}
        self._ids = itertools.count()
        self._prefix = f"fs{uuid.uuid4().hex[:6]}-"
        self.slots = 1 << 30

    async def start(self) -> None:
        self._connection = await connect_with_empty_queues(self.url, "floor-streams", self.queues)
        self._publish = await self._connection.channel(
            publisher_confirms=True, on_return_raises=True
        )
        self._consume = await self._connection.channel()
        await self._consume.set_qos(prefetch_count=self.prefetch)
        queue = await self._consume.declare_queue(self.queues[-1], durable=True)
        await queue.consume(self._arrived)

    async def _arrived(self, message: AbstractIncomingMessage) -> None:
        now = time.perf_counter()
        key, _, seq = (message.message_id or "").rpartition(".")
        entry = self._answers.get(key)
        if entry is not None:
            answer, waiter = entry
            if int(seq) != answer.next_seq:
                answer.out_of_order += 1
            answer.next_seq = int(seq) + 1
            answer.chunks.append((now, 1))
            if answer.next_seq >= answer.tokens and not waiter.done():
                answer.final = now
                waiter.set_result(None)
        await message.ack()

    def _body(self, message_id: str) -> bytes:
        head = b'{"message_id":"' + message_id.encode() + b'","text_delta":"t0 ","pad":"'
        pad = max(0, self.chunk_bytes - len(head) - 2)
        return head + b"x" * pad + b'"}'

    async def ask(self, slot: int, tokens: int, per_s: float, timeout: float) -> Answer:
        assert self._publish is not None, "start() first"
        key = f"{self._prefix}{next(self._ids)}"
        answer = Answer(tokens, per_s)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._answers[key] = (answer, waiter)
        exchange = self._publish.default_exchange
        answer.sent = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                for seq in range(tokens):
                    if per_s > 0:
                        delay = answer.sent + seq / per_s - time.perf_counter()
                        if delay > 0:
                            await asyncio.sleep(delay)
                    message_id = f"{key}.{seq}"
                    await exchange.publish(
                        aio_pika.Message(
                            self._body(message_id),
                            content_type=CONTENT_TYPE,
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                            message_id=message_id,
                        ),
                        routing_key=self.queues[0],
                        mandatory=True,
                    )
                await waiter
        except TimeoutError:
            raise AnswerFailed(
                f"floor answer {key} did not finish within {timeout:.0f} s"
            ) from None
        finally:
            self._answers.pop(key, None)
        return answer

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            async with asyncio.timeout(10):
                if self._consume is not None:
                    await self._consume.close()
                channel = await connection.channel()
                for name in self.queues:
                    await channel.queue_delete(name)
                await connection.close()
        except Exception:  # the vhost may be gone already
            await connection.close()
