"""A hypothesis state machine over the in-process stack: frontends connect, send, close or lose
their socket and come back resuming their session, agents restart, and the gRPC link of an
agent in another "process" (its own gRPC channel, through a TCP proxy) is cut in the middle of
its work, in any order hypothesis finds. A frontend does what docs/protocol.md asks of a
client: after every reconnect it sends again, with the same `message_id`, each TEXT that has
no final answer yet.

The rule checked is the hub's promise: never two final answers (REPLY or ERROR) to one TEXT,
and at the end every TEXT a frontend sent has exactly one."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import subprocess
import uuid
from collections import defaultdict
from typing import Any

import pytest
import websockets
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from agentcomm.config import Settings
from agentcomm.dev import DevStack
from agentcomm.sdk.agent import Agent
from agentcomm.sdk.demo_agents import build_demo_agent
from agentcomm.server.testing import test_settings
from tests.conftest import _rabbitmqctl
from tests.support.loop_thread import LoopThread
from tests.support.tcp_proxy import TcpProxy

STEP_TIMEOUT = 20.0
SETTLE_TIMEOUT = 30.0
FINAL = frozenset({"REPLY", "ERROR"})
RECEIVERS = (None, "echo", "typist", "remote", "nobody")


class _Frontend:
    """A well-behaved client: keeps every final answer it gets across sockets, and re-sends
    what has none after each reconnect."""

    def __init__(self, url: str, name: str) -> None:
        self.url = url
        self.name = name
        self.frontend_id = ""
        self.resume_token = ""
        self.sessions = 0
        self.sent: dict[str, dict[str, Any]] = {}
        self.finals: dict[str, list[str]] = defaultdict(list)
        self._ws: websockets.ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self._ws is not None

    def unanswered(self) -> list[str]:
        return [message_id for message_id in self.sent if not self.finals.get(message_id)]

    async def connect(self, *, resume: bool = True) -> None:
        ws = await websockets.connect(self.url, open_timeout=STEP_TIMEOUT)
        frame: dict[str, Any] = {
            "message_type": "REGISTER_FRONTEND",
            "frontend_name": self.name,
            "capabilities": {"stream": True},
        }
        if resume and self.frontend_id:
            frame |= {"frontend_id": self.frontend_id, "resume_token": self.resume_token}
        await ws.send(json.dumps(frame))
        response = json.loads(await ws.recv())
        assert response["message_type"] == "REGISTER_FRONTEND_RESPONSE", response
        if resume and self.frontend_id:
            assert response["frontend_id"] == self.frontend_id, response
        self.frontend_id, self.resume_token = response["frontend_id"], response["resume_token"]
        self.sessions += 1
        self._ws = ws
        self._reader = asyncio.create_task(self._read(ws))
        for message_id in self.unanswered():
            await ws.send(json.dumps(self.sent[message_id]))

    async def _read(self, ws: websockets.ClientConnection) -> None:
        try:
            async for raw in ws:
                frame = json.loads(raw)
                answered = frame.get("in_reply_to_message_id")
                if frame.get("message_type") in FINAL and answered in self.sent:
                    self.finals[answered].append(frame["message_type"])
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
        self.sent[message_id] = frame
        await self._ws.send(json.dumps(frame))

    async def close(self) -> None:
        """A clean close: the close handshake, then the reader sees the end."""
        if self._ws is not None:
            await self._ws.close()
        await self._forget_socket()

    async def lose(self) -> None:
        """The connection dies under the client (no close handshake), as when a laptop sleeps
        or a proxy drops it: whatever the server was writing is gone with it."""
        if self._ws is not None:
            self._ws.transport.abort()
        await self._forget_socket()

    async def _forget_socket(self) -> None:
        if self._reader is not None:
            await self._reader
        self._ws = self._reader = None


class ExactlyOneAnswer(RuleBasedStateMachine):
    """On the in-process bus."""

    frontends = Bundle("frontends")

    def __init__(self) -> None:
        super().__init__()
        self.loop = LoopThread(STEP_TIMEOUT)
        self.stack = DevStack(self.make_settings())
        self.loop.run(self.stack.start(), timeout=60)
        self.proxy = TcpProxy("127.0.0.1", self.stack.server.grpc_port)
        self.loop.run(self.proxy.start())
        # A typist (its replies take a while, streamed word by word, so a cut link often finds
        # it mid-message) that reaches the server over gRPC only, as a separate process would.
        self.remote: Agent = build_demo_agent(
            "typist",
            self.stack.settings.model_copy(
                update={"grpc_host": "127.0.0.1", "grpc_port": self.proxy.port}
            ),
            name="remote",
            agent_id="remote",
            transport="grpc",
        )
        self.loop.run(self.remote.start(), timeout=60)
        self.url = f"ws://127.0.0.1:{self.stack.server.http_port}/ws"
        self.all: list[_Frontend] = []
        self.ids = itertools.count()

    def make_settings(self, **overrides: Any) -> Settings:
        return test_settings(
            rate_limit_per_second=1000, rate_limit_burst=1000, resume_window=60, **overrides
        )

    def forget_bus(self) -> None:
        """Nothing outlives the in-process bus."""

    @rule(target=frontends)
    def open_frontend(self) -> _Frontend:
        frontend = _Frontend(self.url, f"f{len(self.all)}")
        self.loop.run(frontend.connect())
        self.all.append(frontend)
        return frontend

    @rule(
        frontend=frontends,
        receiver=st.sampled_from(RECEIVERS),
        burst=st.integers(min_value=1, max_value=4),
    )
    def send(self, frontend: _Frontend, receiver: str | None, burst: int) -> None:
        async def send_burst() -> None:
            for _ in range(burst):
                await frontend.send(f"m{next(self.ids)}", receiver)

        if frontend.connected:
            self.loop.run(send_burst())

    @rule(frontend=frontends, pause=st.sampled_from([0.0, 0.05, 0.3]))
    def close_and_resume(self, frontend: _Frontend, pause: float) -> None:
        self.loop.run(self._away(frontend, frontend.close, pause))

    @rule(frontend=frontends, pause=st.sampled_from([0.0, 0.05, 0.3]))
    def lose_and_resume(self, frontend: _Frontend, pause: float) -> None:
        self.loop.run(self._away(frontend, frontend.lose, pause))

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

    @rule()
    def cut_remote_agent_link(self) -> None:
        """Every TCP connection of the remote agent is reset, as when its host vanishes for a
        moment: what it had in hand comes back to it once it reconnects, or its sender hears
        `agent_offline` after DELIVERY_TIMEOUT."""
        self.proxy.reset()

    async def _away(self, frontend: _Frontend, leave: Any, pause: float) -> None:
        await leave()
        await asyncio.sleep(pause)
        await frontend.connect()

    @invariant()
    def never_two_answers(self) -> None:
        for frontend in self.all:
            for message_id, finals in frontend.finals.items():
                assert len(finals) <= 1, (frontend.name, message_id, finals)

    def teardown(self) -> None:
        async def settle() -> None:
            async with asyncio.timeout(SETTLE_TIMEOUT):
                while any(frontend.unanswered() for frontend in self.all):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            # Anything still on its way would be a second answer: give it a moment to show.
            await asyncio.sleep(0.3)

        try:
            # Whatever is still unanswered then is reported by the assertion below.
            with contextlib.suppress(TimeoutError):
                self.loop.run(settle(), timeout=SETTLE_TIMEOUT + 5)
            for frontend in self.all:
                finals = {m: frontend.finals.get(m, []) for m in frontend.sent}
                wrong = {m: answers for m, answers in finals.items() if len(answers) != 1}
                assert not wrong, (frontend.name, frontend.sessions, wrong)
        finally:
            for frontend in self.all:
                self.loop.run(frontend.close())
            self.loop.run(self.remote.stop(), timeout=60)
            self.loop.run(self.proxy.close())
            self.loop.run(self.stack.stop(), timeout=60)
            self.loop.close()
            self.forget_bus()


class ExactlyOneAnswerOnRabbitMQ(ExactlyOneAnswer):
    """The same machine with every hop on RabbitMQ, each example in a vhost of its own."""

    # The bus's own AMQP framing; plain aio-pika below.
    FAST_PATH = True

    def make_settings(self, **overrides: Any) -> Settings:
        self.vhost = f"agentcomm_test_{uuid.uuid4().hex[:12]}"
        _rabbitmqctl("add_vhost", self.vhost)
        _rabbitmqctl("set_permissions", "-p", self.vhost, "guest", ".*", ".*", ".*")
        return super().make_settings(
            message_bus="rabbitmq",
            rabbitmq_host="127.0.0.1",
            rabbitmq_vhost=self.vhost,
            rabbitmq_fast_path=self.FAST_PATH,
        )

    def forget_bus(self) -> None:
        subprocess.run(
            ["rabbitmqctl", "-q", "delete_vhost", self.vhost], capture_output=True, timeout=60
        )


class ExactlyOneAnswerOnPlainRabbitMQ(ExactlyOneAnswerOnRabbitMQ):
    """The same on plain aio-pika (RABBITMQ_FAST_PATH=0)."""

    FAST_PATH = False


ExactlyOneAnswer.TestCase.settings = settings(
    max_examples=20,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_exactly_one_answer_whatever_happens = ExactlyOneAnswer.TestCase

ExactlyOneAnswerOnRabbitMQ.TestCase.settings = settings(
    max_examples=8,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_exactly_one_answer_whatever_happens_on_rabbitmq = pytest.mark.usefixtures(
    "rabbitmq_available"
)(pytest.mark.rabbitmq(ExactlyOneAnswerOnRabbitMQ.TestCase))

ExactlyOneAnswerOnPlainRabbitMQ.TestCase.settings = ExactlyOneAnswerOnRabbitMQ.TestCase.settings
test_exactly_one_answer_whatever_happens_on_plain_rabbitmq = pytest.mark.usefixtures(
    "rabbitmq_available"
)(pytest.mark.rabbitmq(ExactlyOneAnswerOnPlainRabbitMQ.TestCase))
