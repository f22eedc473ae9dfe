"""`agentcomm dev` (what `make run` starts): the whole stack in one process.

Server, reference broker and the demo agents `echo`, `typist` and `planner` share one bus — the
in-process bus by default, RabbitMQ with `--message-bus rabbitmq` (or MESSAGE_BUS=rabbitmq).
Ctrl+C stops everything in reverse order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from agentcomm.broker.service import ReferenceBroker
from agentcomm.bus.base import Bus, BusError
from agentcomm.bus.factory import create_bus
from agentcomm.config import Settings
from agentcomm.core.auth import Role, WeakSecret
from agentcomm.protocol.ids import new_broker_id
from agentcomm.sdk.agent import Agent, replies_waiting
from agentcomm.sdk.demo_agents import build_demo_agent
from agentcomm.server.collector import tune_collector_for_serving
from agentcomm.server.lifecycle.running import RunningServer
from agentcomm.signals import Waiting, stop_on_signals

log = logging.getLogger(__name__)

# The planner last: it asks the other two.
DEMO_AGENTS = ("echo", "typist", "planner")
# The dev stack's own tokens live as long as any dev session reasonably does.
TOKEN_TTL_SECONDS = 30 * 24 * 3600


class DevStack:
    """The running pieces of the one-command stack, started and stopped in order."""

    def __init__(
        self,
        settings: Settings,
        bus: Bus | None = None,
        *,
        agents: Sequence[str] = DEMO_AGENTS,
        with_broker: bool = True,
    ) -> None:
        self.settings = settings
        self.bus = bus or create_bus(settings)
        self.server = RunningServer(settings, self.bus)
        self.broker: ReferenceBroker | None = None
        self.agents: list[Agent] = []
        # Which demo agents and whether a broker run beside this hub (`--hubs` spreads them).
        self._agent_kinds = tuple(agents)
        self._with_broker = with_broker

    @property
    def web_url(self) -> str:
        host = self.settings.host
        if host in ("0.0.0.0", "::", ""):
            host = "localhost"
        return f"http://{host}:{self.server.http_port}/"

    async def start(self) -> None:
        # Pages are let in only once the broker and the demo agents are there: a browser
        # reconnecting after a restart must not find `echo` missing for a moment.
        await self.server.start_hub()
        grpc_target = f"{_dialable(self.settings.grpc_host)}:{self.server.grpc_port}"
        # With AUTH_SECRET set, the stack's own broker and agents get tokens of their own.
        auth = self.server.hub.auth
        try:
            if self._with_broker:
                await self._start_broker(grpc_target)
            for kind in self._agent_kinds:
                token = auth.mint(Role.AGENT, kind, TOKEN_TTL_SECONDS) if auth.enabled else ""
                agent = build_demo_agent(
                    kind,
                    self.settings.model_copy(
                        update={"grpc_port": self.server.grpc_port, "auth_token": token}
                    ),
                    name=kind,
                    agent_id=kind,
                    # They take their work from the stack's own bus, and say which it is.
                    bus=self.bus,
                )
                await agent.start()
                self.agents.append(agent)
            await self.server.start_http()
        except BaseException:
            await self.stop()
            raise

    async def _start_broker(self, grpc_target: str) -> None:
        auth = self.server.hub.auth
        broker_id = new_broker_id()
        self.broker = ReferenceBroker(
            self.bus,
            grpc_target,
            broker_id=broker_id,
            broker_name="dev-broker",
            concurrency=self.settings.consumer_concurrency,
            returning_grace=self.settings.agent_timeout,
            token=auth.mint(Role.BROKER, broker_id, TOKEN_TTL_SECONDS) if auth.enabled else "",
        )
        await self.broker.start()

    def waiting(self) -> Waiting | None:
        """What stopping now waits for: the demo agents' replies in progress."""
        return replies_waiting(
            sum(agent.in_flight for agent in self.agents), self.settings.shutdown_timeout
        )

    async def stop(self) -> None:
        # At once, so that the wait is SHUTDOWN_TIMEOUT at most, as the stop line says.
        outcomes = await asyncio.gather(
            *(agent.stop() for agent in self.agents), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, Exception):
                log.error("A demo agent did not stop cleanly", exc_info=outcome)
            elif isinstance(outcome, BaseException):
                raise outcome
        self.agents.clear()
        if self.broker is not None:
            await self.broker.stop()
            self.broker = None
        await self.server.stop()


def _dialable(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


async def run_dev(settings: Settings) -> int:
    try:
        stack = DevStack(settings)
    except WeakSecret as exc:
        log.error("Cannot start the dev stack: %s", exc)
        return 2
    try:
        await stack.start()
    except (BusError, OSError) as exc:
        log.error("Cannot start the dev stack: %s", exc)
        return 1
    # The same collector settings as `agentcomm serve`: the stack is a serving process too.
    tune_collector_for_serving()
    print(
        f"\n  agentcomm is running — open {stack.web_url}\n"
        f"  agents: {', '.join(DEMO_AGENTS)} · bus: {settings.message_bus} · "
        f"gRPC: {settings.grpc_host}:{stack.server.grpc_port}\n  Ctrl+C stops everything.\n",
        flush=True,
    )
    stop = asyncio.Event()
    with stop_on_signals(stop.set, stack.waiting):
        await stop.wait()
        await stack.stop()
    return 0
