"""A hypothesis state machine over the in-process stack: frontends connect, send, drop their
socket and resume, agents restart, in any order hypothesis finds; at the end every TEXT the
server accepted has exactly one final answer (REPLY or ERROR) at its frontend."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
from collections import defaultdict
from collections.abc import Coroutine
from typing import Any, TypeVar

import websockets
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from agentcomm.dev import DevStack
from agentcomm.sdk.demo_agents import build_demo_agent
from agentcomm.server.testing import test_settings

T = TypeVar("T")
STEP_TIMEOUT = 20.0
FINAL = frozenset({"REPLY", "ERROR"})


class _LoopThread:
    """The event loop the machine's steps run on (hypothesis calls rules synchronously)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = STEP_TIMEOUT) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        self.loop.close()


class _Frontend:
    """A frontend that keeps every final answer it gets, across resumed sockets."""

    def __init__(self, url: str, name: str) -> None:
        self.url = url
        self.name = name
        self.frontend_id = ""
        self.resume_token = ""
        self.accepted: set[str] = set()
        self.finals: dict[str, list[str]] = defaultdict(list)
        self._ws: websockets.ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        ws = await websockets.connect(self.url, open_timeout=STEP_TIMEOUT)
        frame: dict[str, Any] = {"message_type": "REGISTER_FRONTEND", "frontend_name": self.name}
        if self.frontend_id:
            frame |= {"frontend_id": self.frontend_id, "resume_token": self.resume_token}
        await ws.send(json.dumps(frame))
        response = json.loads(await ws.recv())
        assert response["message_type"] == "REGISTER_FRONTEND_RESPONSE", response
        assert not self.frontend_id or response["frontend_id"] == self.frontend_id, response
        self.frontend_id, self.resume_token = response["frontend_id"], response["resume_token"]
        self._ws = ws
        self._reader = asyncio.create_task(self._read(ws))

    async def _read(self, ws: websockets.ClientConnection) -> None:
        try:
            async for raw in ws:
                frame = json.loads(raw)
                kind = frame.get("message_type")
                if kind == "TEXT" and frame.get("routing_status") == "pending":
                    self.accepted.add(frame["message_id"])
                elif kind in FINAL and frame.get("in_reply_to_message_id"):
                    self.finals[frame["in_reply_to_message_id"]].append(kind)
        except websockets.ConnectionClosed:
            pass

    async def send(self, message_id: str, receiver: str | None) -> None:
        assert self._ws is not None
        frame: dict[str, Any] = {
            "message_type": "TEXT",
            "message_id": message_id,
            "text_payload": f"turn {message_id}",
        }
        if receiver:
            frame["receiver_id"] = receiver
        await self._ws.send(json.dumps(frame))

    async def drop(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            await self._reader
        self._ws = self._reader = None


class ExactlyOneAnswer(RuleBasedStateMachine):
    frontends = Bundle("frontends")

    def __init__(self) -> None:
        super().__init__()
        self.loop = _LoopThread()
        self.stack = DevStack(
            test_settings(rate_limit_per_second=1000, rate_limit_burst=1000, resume_window=60)
        )
        self.loop.run(self.stack.start(), timeout=60)
        self.url = f"ws://127.0.0.1:{self.stack.server.http_port}/ws"
        self.all: list[_Frontend] = []
        self.ids = itertools.count()

    @rule(target=frontends)
    def open_frontend(self) -> _Frontend:
        frontend = _Frontend(self.url, f"f{len(self.all)}")
        self.loop.run(frontend.connect())
        self.all.append(frontend)
        return frontend

    @rule(frontend=frontends, receiver=st.sampled_from([None, "echo", "typist", "nobody"]))
    def send(self, frontend: _Frontend, receiver: str | None) -> None:
        if frontend._ws is not None:
            self.loop.run(frontend.send(f"m{next(self.ids)}", receiver))

    @rule(frontend=frontends)
    def drop_and_resume(self, frontend: _Frontend) -> None:
        self.loop.run(frontend.drop())
        self.loop.run(frontend.connect())

    @rule(kind=st.sampled_from(["echo", "typist"]))
    def restart_agent(self, kind: str) -> None:
        async def restart() -> None:
            [agent] = [a for a in self.stack.agents if a.id == kind]
            await agent.stop()
            self.stack.agents.remove(agent)
            fresh = build_demo_agent(
                kind,
                self.stack.settings.model_copy(update={"grpc_port": self.stack.server.grpc_port}),
                name=kind,
                agent_id=kind,
                transport="amqp",
                bus=self.stack.bus,
            )
            await fresh.start()
            self.stack.agents.append(fresh)

        self.loop.run(restart(), timeout=60)

    @invariant()
    def never_two_answers(self) -> None:
        for frontend in self.all:
            for message_id, finals in frontend.finals.items():
                assert len(finals) <= 1, (frontend.name, message_id, finals)

    def teardown(self) -> None:
        async def settle() -> None:
            async with asyncio.timeout(STEP_TIMEOUT):
                while any(  # noqa: ASYNC110 - polling state no event announces
                    not frontend.finals.get(message_id)
                    for frontend in self.all
                    for message_id in frontend.accepted
                ):
                    await asyncio.sleep(0.05)

        try:
            self.loop.run(settle(), timeout=STEP_TIMEOUT + 5)
            for frontend in self.all:
                for message_id in frontend.accepted:
                    assert len(frontend.finals[message_id]) == 1, (message_id, frontend.finals)
        finally:
            for frontend in self.all:
                self.loop.run(frontend.drop())
            self.loop.run(self.stack.stop(), timeout=60)
            self.loop.close()


ExactlyOneAnswer.TestCase.settings = settings(
    max_examples=15,
    stateful_step_count=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_exactly_one_answer_whatever_happens = ExactlyOneAnswer.TestCase
