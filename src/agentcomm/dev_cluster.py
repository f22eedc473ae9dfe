"""`agentcomm dev --hubs N`: N hubs on one RabbitMQ, as one system, behind one address.

Each hub is a `DevStack` of its own in this process — its own bus connection, server tag and
ports (any free ones) — and they find each other on the bus as separate `agentcomm serve`
processes do. The broker runs beside the first hub and the demo agents beside the others, so
that a frontend's turns cross from hub to hub. A small load balancer (`dev_balancer.py`) takes
HTTP_PORT and hands each connection to the next ready hub. The in-process bus is one hub: it is
refused with a sentence.
"""

from __future__ import annotations

import asyncio
import logging

from agentcomm.bus.base import BusError
from agentcomm.config import Settings
from agentcomm.core.auth import WeakSecret
from agentcomm.dev import DEMO_AGENTS, DevStack
from agentcomm.dev_balancer import DevBalancer
from agentcomm.server.collector import tune_collector_for_serving
from agentcomm.signals import Waiting, stop_on_signals

log = logging.getLogger(__name__)

MAX_HUBS = 16


def refusal(settings: Settings, hubs: int) -> str | None:
    """Why `--hubs hubs` cannot run with these settings, in one sentence; None when it can."""
    if not 1 <= hubs <= MAX_HUBS:
        return f"--hubs takes 1 to {MAX_HUBS} hubs, not {hubs}."
    if settings.message_bus != "rabbitmq":
        return (
            "--hubs needs RabbitMQ: the in-process bus lives inside one hub, so run "
            "`agentcomm dev --hubs N --message-bus rabbitmq` (or MESSAGE_BUS=rabbitmq)."
        )
    return None


class ClusterDevStack:
    """`hubs` dev stacks on one RabbitMQ and the load balancer in front of them."""

    def __init__(self, settings: Settings, hubs: int) -> None:
        self.settings = settings
        # The balancer takes HTTP_PORT; the hubs listen on any free ports behind it.
        hub_settings = settings.model_copy(update={"port": 0, "grpc_port": 0})
        self.stacks = [
            DevStack(
                hub_settings,
                agents=[kind for k, kind in enumerate(DEMO_AGENTS) if (k + 1) % hubs == index],
                with_broker=index == 0,
            )
            for index in range(hubs)
        ]
        self.balancer: DevBalancer | None = None

    @property
    def web_url(self) -> str:
        host = self.settings.host
        if host in ("0.0.0.0", "::", ""):
            host = "localhost"
        port = self.balancer.port if self.balancer is not None else self.settings.port
        return f"http://{host}:{port}/"

    async def start(self) -> None:
        try:
            for stack in self.stacks:
                await stack.start()
            backends = [("127.0.0.1", stack.server.http_port) for stack in self.stacks]
            self.balancer = DevBalancer(self.settings.host, self.settings.port, backends)
            await self.balancer.start()
        except BaseException:
            await self.stop()
            raise

    def waiting(self) -> Waiting | None:
        for stack in self.stacks:
            waiting = stack.waiting()
            if waiting is not None:
                return waiting
        return None

    async def stop(self) -> None:
        if self.balancer is not None:
            await self.balancer.stop()
            self.balancer = None
        for stack in reversed(self.stacks):
            await stack.stop()


async def run_dev_cluster(settings: Settings, hubs: int) -> int:
    why = refusal(settings, hubs)
    if why is not None:
        log.error("Cannot start the dev cluster: %s", why)
        return 2
    try:
        cluster = ClusterDevStack(settings, hubs)
    except WeakSecret as exc:
        log.error("Cannot start the dev cluster: %s", exc)
        return 2
    try:
        await cluster.start()
    except (BusError, OSError) as exc:
        log.error("Cannot start the dev cluster: %s", exc)
        return 1
    tune_collector_for_serving()
    ports = ", ".join(str(stack.server.http_port) for stack in cluster.stacks)
    print(
        f"\n  agentcomm is running — open {cluster.web_url}\n"
        f"  {hubs} hubs (HTTP ports {ports}) behind one load balancer · "
        f"agents: {', '.join(DEMO_AGENTS)} · bus: {settings.message_bus}\n"
        "  Ctrl+C stops everything.\n",
        flush=True,
    )
    stop = asyncio.Event()
    with stop_on_signals(stop.set, cluster.waiting):
        await stop.wait()
        await cluster.stop()
    return 0
