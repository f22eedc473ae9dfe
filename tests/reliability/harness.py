"""A counting load of chat turns: several WebSocket frontends send TEXTs to several echo agents
and record, per message_id, every final answer (REPLY or ERROR) that comes back.

The rule under test: every TEXT the server accepted ends in exactly one final answer at its
frontend. The load behaves like a careful client:

- a TEXT refused with `ERROR bus_unavailable` (or `rate_limited`) was not accepted; it is sent
  again with the same message_id after a short pause, as the web UI's outbox does;
- a socket that closes is opened again and the session resumed with frontend_id and
  resume_token; when the server does not know the session any more (it restarted), every TEXT
  still without an answer is sent again, with the same message_id, on the new session.

`report()` then counts:

- lost: sent, but no final answer by the end;
- duplicated: more than one final answer (refusals not counted, they answer an attempt that
  was not accepted);
- unexpected: a final answer for a message this frontend never sent, or a REPLY whose text is
  not the echo of the TEXT;
- recovered: messages that were in flight when the fault began (see `mark_fault`) or had to be
  sent again, and still got exactly one REPLY.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

log = logging.getLogger(__name__)

FINAL_TYPES = frozenset({"REPLY", "ERROR"})
# Answers that mean "not accepted, try again": they answer an attempt, not the message.
REFUSAL_CODES = frozenset({"bus_unavailable", "rate_limited"})
CONNECT_TIMEOUT = 5.0
RETRY_PAUSE = 0.3
RECONNECT_PAUSE = 0.2


@dataclass
class Turn:
    """One chat turn: a TEXT and what came back for it."""

    message_id: str
    frontend: str
    receiver_id: str | None
    text: str
    first_sent: float = 0.0
    last_sent: float = 0.0
    attempts: int = 0
    accepted: bool = False
    # (seconds from the attempt to its refusal, error_code)
    refusals: list[tuple[float, str]] = field(default_factory=list)
    finals: list[dict[str, Any]] = field(default_factory=list)
    answered_at: float | None = None
    resent_on_new_session: int = 0

    @property
    def answered(self) -> bool:
        return bool(self.finals)

    @property
    def retried(self) -> bool:
        return self.attempts > 1


@dataclass
class Report:
    sent: int
    accepted: int
    replies: int
    errors: Counter[str]
    refusals: Counter[str]
    lost: list[str]
    duplicated: list[str]
    unexpected: list[str]
    in_flight_at_fault: int
    recovered: int
    retried: int
    resent: int
    reconnects: int
    max_refusal_seconds: float

    def counts(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "accepted": self.accepted,
            "replies": self.replies,
            "errors": dict(self.errors),
            "refusals": dict(self.refusals),
            "lost": len(self.lost),
            "duplicated": len(self.duplicated),
            "unexpected": len(self.unexpected),
            "in_flight_at_fault": self.in_flight_at_fault,
            "recovered": self.recovered,
            "retried": self.retried,
            "resent": self.resent,
            "reconnects": self.reconnects,
            "max_refusal_seconds": round(self.max_refusal_seconds, 2),
        }

    def __str__(self) -> str:
        return json.dumps(self.counts(), sort_keys=True)


class LoadFrontend:
    """One frontend socket of the load: sends, reads, reconnects and resumes."""

    def __init__(self, load: ChatLoad, name: str) -> None:
        self.load = load
        self.name = name
        self.frontend_id: str | None = None
        self.resume_token: str | None = None
        self.ws: ClientConnection | None = None
        self.online = asyncio.Event()
        self.reconnects = 0
        self.sessions = 0
        self.resumed = 0
        self._reader: asyncio.Task[None] | None = None
        self._closing = False
        self._send_lock = asyncio.Lock()

    async def open(self) -> None:
        await self._connect()

    async def close(self) -> None:
        self._closing = True
        if self.ws is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(3):
                    await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                async with asyncio.timeout(3):
                    await self._reader

    def drop(self) -> None:
        """Cuts the socket without a close handshake (a network drop); it reconnects and
        resumes by itself."""
        if self.ws is not None:
            self.ws.transport.abort()

    async def send(self, frame: dict[str, Any]) -> bool:
        """Sends once the socket is up; False when it closed under the send."""
        async with asyncio.timeout(self.load.send_timeout):
            await self.online.wait()
        ws = self.ws
        assert ws is not None
        try:
            async with self._send_lock, asyncio.timeout(self.load.send_timeout):
                await ws.send(json.dumps(frame))
        except ConnectionClosed:
            # Down until the reader has reconnected; without this a retry would find the
            # socket "online" still and spin without ever letting the reader run.
            if self.ws is ws:
                self.online.clear()
            return False
        return True

    async def _connect(self) -> None:
        """Opens a socket and registers (resuming when it can); retries until the deadline."""
        deadline = time.monotonic() + self.load.reconnect_timeout
        while True:
            try:
                await self._register()
                return
            except (
                OSError,
                ConnectionClosed,
                InvalidHandshake,
                InvalidStatus,
                TimeoutError,
            ) as exc:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"{self.name} could not reconnect within {self.load.reconnect_timeout} s: "
                        f"{exc!r}"
                    ) from exc
                await asyncio.sleep(RECONNECT_PAUSE)

    async def _register(self) -> None:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            ws = await connect(
                self.load.ws_url(), open_timeout=CONNECT_TIMEOUT, close_timeout=2, max_size=None
            )
            frame: dict[str, Any] = {
                "message_type": "REGISTER_FRONTEND",
                "frontend_name": self.name,
            }
            if self.frontend_id and self.resume_token:
                frame["frontend_id"] = self.frontend_id
                frame["resume_token"] = self.resume_token
            await ws.send(json.dumps(frame))
            response = json.loads(await ws.recv())
        if response.get("message_type") != "REGISTER_FRONTEND_RESPONSE":
            await ws.close()
            raise ConnectionClosed(None, None)
        previous = self.frontend_id
        self.frontend_id = response["frontend_id"]
        self.resume_token = response.get("resume_token")
        self.sessions += 1
        self.ws = ws
        self._reader = asyncio.create_task(self._read(ws), name=f"load-{self.name}-reader")
        self.online.set()
        if previous is not None and previous != self.frontend_id:
            # The server forgot the session: what is unanswered goes again, same ids.
            self.load.resend_unanswered(self)
        elif previous is not None:
            self.resumed += 1
            # What was written to the broken socket may never have arrived: unanswered TEXTs
            # go again with their ids (the server recognises those it has, and says so again).
            self.load.resend_unanswered(self)

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for raw in ws:
                self.load.on_frame(self, json.loads(raw))
        except ConnectionClosed:
            pass
        finally:
            self.online.clear()
            if not self._closing:
                self.reconnects += 1
                self.load.spawn(self._connect(), f"load-{self.name}-reconnect")


class ChatLoad:
    """`frontends` sockets sending `total` TEXTs round-robin to `agents`, `window` unanswered
    at a time per frontend."""

    def __init__(
        self,
        ws_url: str | Callable[[], str],
        agents: list[str],
        *,
        frontends: int = 4,
        window: int = 8,
        max_attempts: int = 20,
        reconnect_timeout: float = 30.0,
        send_timeout: float = 30.0,
        text_prefix: str = "turn",
    ) -> None:
        self.ws_url: Callable[[], str] = ws_url if callable(ws_url) else (lambda: ws_url)
        self.agents = agents
        self.window = window
        self.max_attempts = max_attempts
        self.reconnect_timeout = reconnect_timeout
        self.send_timeout = send_timeout
        self.text_prefix = text_prefix
        self.frontends = [LoadFrontend(self, f"load-{index}") for index in range(frontends)]
        self.turns: dict[str, Turn] = {}
        self.unexpected: list[str] = []
        self.sent = 0
        self._outstanding: dict[str, asyncio.Semaphore] = {}
        self._fault_ids: set[str] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._errors: list[BaseException] = []
        self._changed = asyncio.Event()
        self.run_id = uuid.uuid4().hex[:8]

    # -- lifecycle -----------------------------------------------------------------------------

    async def open(self) -> ChatLoad:
        await asyncio.gather(*(frontend.open() for frontend in self.frontends))
        for frontend in self.frontends:
            self._outstanding[frontend.name] = asyncio.Semaphore(self.window)
        return self

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(frontend.close() for frontend in self.frontends))

    async def __aenter__(self) -> ChatLoad:
        return await self.open()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def spawn(self, coroutine: Any, name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._errors.append(exc)
            self._changed.set()

    # -- sending -------------------------------------------------------------------------------

    async def run(self, total: int, *, pace: float = 0.0) -> None:
        """Sends `total` TEXTs, spread over the frontends (returns once all are sent)."""
        senders = [
            self._send_share(frontend, range(index, total, len(self.frontends)), pace)
            for index, frontend in enumerate(self.frontends)
        ]
        await asyncio.gather(*senders)

    def start(self, total: int, *, pace: float = 0.0) -> asyncio.Task[None]:
        return asyncio.create_task(self.run(total, pace=pace), name="load-run")

    async def _send_share(self, frontend: LoadFrontend, numbers: range, pace: float) -> None:
        window = self._outstanding[frontend.name]
        for number in numbers:
            self._raise_errors()
            async with asyncio.timeout(self.send_timeout):
                await window.acquire()
            message_id = f"{self.text_prefix}-{self.run_id}-{number}"
            receiver = self.agents[number % len(self.agents)] if self.agents else None
            turn = Turn(message_id, frontend.name, receiver, f"{self.text_prefix} {number}")
            self.turns[message_id] = turn
            await self._attempt(frontend, turn)
            self.sent += 1
            self._changed.set()
            if pace:
                await asyncio.sleep(pace)

    async def _attempt(self, frontend: LoadFrontend, turn: Turn) -> None:
        frame: dict[str, Any] = {
            "message_type": "TEXT",
            "message_id": turn.message_id,
            "text_payload": turn.text,
        }
        if turn.receiver_id:
            frame["receiver_id"] = turn.receiver_id
        while True:
            turn.attempts += 1
            turn.last_sent = time.monotonic()
            if not turn.first_sent:
                turn.first_sent = turn.last_sent
            if await frontend.send(frame):
                return
            # The socket closed under the send: it may or may not have arrived; sent again
            # (same id) once the socket is back, the server recognises a duplicate.

    async def _retry(self, frontend: LoadFrontend, turn: Turn) -> None:
        await asyncio.sleep(RETRY_PAUSE)
        await self._attempt(frontend, turn)

    def resend_unanswered(self, frontend: LoadFrontend) -> None:
        for turn in list(self.turns.values()):
            if turn.frontend == frontend.name and not turn.answered:
                turn.resent_on_new_session += 1
                self.spawn(self._attempt(frontend, turn), f"load-resend-{turn.message_id}")

    # -- receiving -----------------------------------------------------------------------------

    def on_frame(self, frontend: LoadFrontend, frame: dict[str, Any]) -> None:
        kind = frame.get("message_type")
        if kind == "TEXT":
            turn = self.turns.get(frame.get("message_id") or "")
            if turn is not None and frame.get("routing_status") == "pending":
                turn.accepted = True
            return
        if kind not in FINAL_TYPES:
            return
        answered = frame.get("in_reply_to_message_id")
        if not answered:
            return  # a notice about a frame without an id
        turn = self.turns.get(answered)
        if turn is None or turn.frontend != frontend.name:
            self.unexpected.append(f"{frontend.name} got {kind} for {answered}: {frame}")
            return
        code = frame.get("error_code")
        if kind == "ERROR" and code in REFUSAL_CODES:
            turn.refusals.append((time.monotonic() - turn.last_sent, code))
            if turn.attempts < self.max_attempts:
                self.spawn(self._retry(frontend, turn), f"load-retry-{turn.message_id}")
            else:
                turn.finals.append(frame)
                self._settled(turn)
            return
        if kind == "REPLY" and frame.get("text_payload") != f"echo: {turn.text}":
            self.unexpected.append(f"{turn.message_id}: wrong reply {frame.get('text_payload')!r}")
        turn.finals.append(frame)
        if len(turn.finals) == 1:
            turn.answered_at = time.monotonic()
            self._settled(turn)

    def _settled(self, turn: Turn) -> None:
        self._outstanding[turn.frontend].release()
        self._changed.set()

    # -- waiting and counting -----------------------------------------------------------------

    def drop_all(self) -> None:
        for frontend in self.frontends:
            frontend.drop()

    @property
    def resumed(self) -> int:
        """Sessions that were resumed (same frontend_id) rather than started afresh."""
        return sum(frontend.resumed for frontend in self.frontends)

    def mark_fault(self) -> int:
        """Remembers which messages are in flight as a fault begins; returns how many."""
        self._fault_ids = {t.message_id for t in self.turns.values() if not t.answered}
        return len(self._fault_ids)

    @property
    def answered(self) -> int:
        return sum(1 for turn in self.turns.values() if turn.answered)

    async def wait_sent(self, count: int, *, timeout: float) -> None:
        await self._wait(lambda: self.sent >= count, timeout, f"{count} TEXTs sent")

    async def wait_answered(self, count: int, *, timeout: float) -> None:
        await self._wait(lambda: self.answered >= count, timeout, f"{count} answers")

    async def wait_settled(self, total: int, *, timeout: float) -> None:
        """Until all `total` TEXTs are sent and answered (failing with the counts if not)."""
        try:
            await self._wait(
                lambda: self.sent >= total and self.answered >= total, timeout, "all answers"
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}; {self.report()}") from None

    async def quiet(self, seconds: float) -> None:
        """Keeps reading for `seconds` more, so that late duplicates are seen and counted."""
        await asyncio.sleep(seconds)
        self._raise_errors()

    async def _wait(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not condition():
                    self._raise_errors()
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"Timed out after {timeout} s waiting for {what} "
                f"(sent {self.sent}, answered {self.answered})"
            ) from None
        self._raise_errors()

    def _raise_errors(self) -> None:
        if self._errors:
            raise self._errors[0]

    def report(self) -> Report:
        turns = list(self.turns.values())
        errors: Counter[str] = Counter()
        refusals: Counter[str] = Counter()
        replies = 0
        for turn in turns:
            for _, code in turn.refusals:
                refusals[code] += 1
            for final in turn.finals:
                if final.get("message_type") == "REPLY":
                    replies += 1
                else:
                    errors[str(final.get("error_code"))] += 1
        fault_ids = self._fault_ids or set()
        recovered = sum(
            1
            for turn in turns
            if (turn.message_id in fault_ids or turn.retried)
            and len(turn.finals) == 1
            and turn.finals[0].get("message_type") == "REPLY"
        )
        refusal_seconds = [seconds for turn in turns for seconds, _ in turn.refusals]
        return Report(
            sent=len(turns),
            accepted=sum(1 for turn in turns if turn.accepted),
            replies=replies,
            errors=errors,
            refusals=refusals,
            lost=[turn.message_id for turn in turns if not turn.finals],
            duplicated=[turn.message_id for turn in turns if len(turn.finals) > 1],
            unexpected=list(self.unexpected),
            in_flight_at_fault=len(fault_ids),
            recovered=recovered,
            retried=sum(1 for turn in turns if turn.retried),
            resent=sum(turn.resent_on_new_session for turn in turns),
            reconnects=sum(frontend.reconnects for frontend in self.frontends),
            max_refusal_seconds=max(refusal_seconds, default=0.0),
        )
