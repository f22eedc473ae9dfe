"""`agentcomm a2a-bridge URL`: an outside A2A agent on the hub, as an SDK agent.

The bridge reads the remote's card, registers an agent with the card's skills as capabilities
(`cards.capabilities_of`), and answers each message with an A2A call (`remote.py`). While the
remote cannot be reached its agent is unregistered, so the hub shows it offline and answers
`agent_offline` at once; the bridge looks again every A2A_REMOTE_CHECK_INTERVAL (and at once
after a call found the remote gone) and registers it again when it is back. Credentials for
the remote come from settings (A2A_REMOTE_TOKEN), never from a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re

import httpx
from a2a.client import A2ACardResolver, AgentCardResolutionError, ClientConfig, ClientFactory
from a2a.types import AgentCard

from agentcomm.bus import Bus
from agentcomm.config import Settings
from agentcomm.gateways.a2a.cards import capabilities_of
from agentcomm.gateways.a2a.remote import RemoteCalls
from agentcomm.logging_setup import configure_logging_unless_configured
from agentcomm.protocol.ids import is_valid_id
from agentcomm.sdk import Agent, AgentError
from agentcomm.signals import stop_on_signals

log = logging.getLogger(__name__)

# Connecting and sending may take this long; an answer as long as the remote needs (a stream
# may be quiet between chunks), the hub's ANSWER_TIMEOUT being the bound on a whole answer.
CONNECT_SECONDS = 10.0


class BridgeError(Exception):
    """The remote agent cannot be bridged: its card cannot be read, or the hub refused it."""


def agent_id_for(name: str) -> str:
    """An agent id made from a card's name ("Currency Agent" -> "Currency-Agent")."""
    if is_valid_id(name):
        return name
    made = re.sub(r"[^A-Za-z0-9_.:-]+", "-", name).strip("-")[:128]
    return made or "a2a-agent"


class A2ABridge:
    def __init__(
        self,
        url: str,
        settings: Settings,
        *,
        name: str | None = None,
        transport: str | None = None,
        bus: Bus | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.settings = settings
        self._name = name
        self._transport = transport
        self._bus = bus
        headers = {}
        if settings.a2a_remote_token:
            headers["Authorization"] = f"Bearer {settings.a2a_remote_token}"
        self._http = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(CONNECT_SECONDS, read=None),
        )
        self.agent: Agent | None = None
        self._look_again = asyncio.Event()
        self._watch: asyncio.Task[None] | None = None

    async def card(self) -> AgentCard:
        return await A2ACardResolver(self._http, self.url).get_agent_card()

    async def start(self) -> None:
        """Reads the card and registers the agent; raises BridgeError."""
        try:
            card = await self.card()
        except AgentCardResolutionError as exc:
            raise BridgeError(f"Cannot read the agent card at {self.url}: {exc}") from None
        await self._up(card)
        self._watch = asyncio.create_task(self._watch_remote(), name="a2a-bridge-watch")

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        await self._down()
        await self._http.aclose()

    async def serve(self) -> int:
        """Runs until SIGINT/SIGTERM; the process's exit code."""
        configure_logging_unless_configured(self.settings)
        stop = asyncio.Event()
        with stop_on_signals(stop.set):
            try:
                await self.start()
            except BridgeError as exc:
                log.error("%s", exc)
                await self.stop()
                return 1
            try:
                await stop.wait()
            finally:
                await self.stop()
        return 0

    # -- inside ------------------------------------------------------------------------------

    def _agent_for(self, card: AgentCard) -> Agent:
        streaming = card.capabilities.streaming
        client = ClientFactory(ClientConfig(httpx_client=self._http, streaming=streaming)).create(
            card
        )
        calls = RemoteCalls(client, on_unreachable=self._look_again.set)
        name = self._name or card.name or "a2a-agent"
        agent = Agent(
            name,
            agent_id=agent_id_for(name),
            capabilities=capabilities_of(card, self.url),
            settings=self.settings,
            transport=self._transport,
            bus=self._bus,
        )
        agent.on_message(calls.stream if streaming else calls.reply)
        return agent

    async def _up(self, card: AgentCard) -> None:
        agent = self._agent_for(card)
        try:
            await agent.start()
        except AgentError as exc:
            raise BridgeError(f"The hub refused the bridged agent {agent.name}: {exc}") from None
        self.agent = agent
        log.info("Bridging A2A agent %s at %s as agent %s", card.name, self.url, agent.id)

    async def _down(self) -> None:
        agent, self.agent = self.agent, None
        if agent is not None:
            await agent.stop()

    async def _watch_remote(self) -> None:
        interval = self.settings.a2a_remote_check_interval
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._look_again.wait()
            self._look_again.clear()
            try:
                card = await self.card()
            except AgentCardResolutionError as exc:
                if self.agent is not None:
                    log.warning("The remote agent at %s is gone (%s): offline", self.url, exc)
                    await self._down()
                continue
            if self.agent is None:
                try:
                    await self._up(card)
                except BridgeError as exc:
                    log.warning("%s; trying again", exc)
