"""Agent presence as the broker sees it: the server's SubscribeToAgentStatus stream.

`AgentTable` holds the last known AgentInfo of every agent (pure, no I/O). `PresenceFollower`
keeps it current: it registers the broker, opens the stream (a full list first, then deltas),
and when the server goes away it keeps the last known table, marks it stale and reconnects
with exponential backoff. Routing goes on meanwhile with what is known; that beats refusing
every message while a server restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping

import grpc
import grpc.aio

from agentcomm.generated import (
    agent_status_service_pb2,
    agent_status_service_pb2_grpc,
    broker_registration_service_pb2,
    broker_registration_service_pb2_grpc,
)
from agentcomm.protocol.models import AgentInfo
from agentcomm.protocol.vocabulary import AgentState

log = logging.getLogger(__name__)


def agent_from_proto(message: agent_status_service_pb2.AgentInfo) -> AgentInfo:
    """Reads one AgentInfo; a server that leaves `status` empty (the seed's) gets it derived."""
    try:
        status = AgentState(message.status.strip().lower())
    except ValueError:
        status = AgentState.ONLINE
    if not message.is_online:
        status = AgentState.OFFLINE
    return AgentInfo(
        agent_id=message.agent_id,
        agent_name=message.agent_name,
        is_online=message.is_online,
        last_seen=message.last_seen,
        status=status,
        capabilities=dict(message.capabilities),
        in_flight=message.in_flight,
    )


class AgentTable:
    """The last known state of every agent, and whether it may be out of date.

    A server that restarted knows no agent until each registers again, a second or two later.
    So when the stream comes back with a full list that lacks agents that were online before
    the loss, those agents are kept as *returning* for `returning_grace` seconds (or until the
    server says anything of them): messages for them are routed on, to wait in their queues,
    and the server answers `agent_offline` for any that is not back within DELIVERY_TIMEOUT,
    instead of the broker refusing everything sent to them in that moment.
    """

    def __init__(
        self, *, returning_grace: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._agents: dict[str, AgentInfo] = {}
        # Nothing is known before the first full list, which is as good as out of date.
        self.stale = True
        self._returning_grace = returning_grace
        self._clock = clock
        self._returning_until: dict[str, float] = {}

    @property
    def agents(self) -> Mapping[str, AgentInfo]:
        return self._agents

    @property
    def returning(self) -> frozenset[str]:
        return frozenset(self._returning_until)

    def apply(self, agents: Iterable[AgentInfo], *, full: bool) -> list[str]:
        """Applies a full list or a delta; returns the ids of agents that stopped being online."""
        before = {agent_id for agent_id, agent in self._agents.items() if agent.is_online}
        if full:
            fresh = {agent.agent_id: agent for agent in agents}
            if self.stale and self._agents:
                # Back after a loss: keep who was online and is missing, for a while.
                until = self._clock() + self._returning_grace
                for agent_id in before - fresh.keys():
                    fresh[agent_id] = self._agents[agent_id]
                    self._returning_until[agent_id] = until
            for agent_id in list(self._returning_until):
                if agent_id not in fresh:
                    del self._returning_until[agent_id]
            self._agents = fresh
            self.stale = False
        else:
            for agent in agents:
                self._agents[agent.agent_id] = agent
                self._returning_until.pop(agent.agent_id, None)
        after = {agent_id for agent_id, agent in self._agents.items() if agent.is_online}
        return sorted(before - after)

    def prune(self) -> list[str]:
        """Drops the returning agents whose grace ran out; returns their ids."""
        if not self._returning_until:
            return []
        now = self._clock()
        expired = [a for a, until in self._returning_until.items() if until <= now]
        for agent_id in expired:
            del self._returning_until[agent_id]
            self._agents.pop(agent_id, None)
        return expired

    def mark_stale(self) -> None:
        self.stale = True


class PresenceFollower:
    """Registers the broker and follows the agent status stream, reconnecting as needed."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        table: AgentTable,
        *,
        broker_id: str,
        broker_name: str,
        on_offline: Callable[[str], None],
        initial_backoff: float = 0.2,
        max_backoff: float = 10.0,
        call_timeout: float = 10.0,
    ) -> None:
        self._status = agent_status_service_pb2_grpc.AgentStatusServiceStub(channel)
        self._brokers = broker_registration_service_pb2_grpc.BrokerRegistrationServiceStub(channel)
        self._table = table
        self._broker_id = broker_id
        self._broker_name = broker_name
        self._on_offline = on_offline
        self._initial_backoff = initial_backoff
        self._max_backoff = max_backoff
        self._call_timeout = call_timeout
        self._registered = False
        self._synced = asyncio.Event()
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    async def register(self, *, wait_for_ready: bool = False) -> None:
        """RegisterBroker. Raises grpc.aio.AioRpcError when the server cannot be reached."""
        response = await self._brokers.RegisterBroker(
            broker_registration_service_pb2.BrokerRegistrationRequest(
                broker_id=self._broker_id, broker_name=self._broker_name
            ),
            timeout=self._call_timeout,
            wait_for_ready=wait_for_ready,
        )
        if not response.success:
            # Routing does not depend on it, so a refusal is worth a warning, not a stop.
            log.warning("The server did not accept broker registration: %s", response.message)
        else:
            log.info("Registered as broker %s (%s)", self._broker_id, self._broker_name)
        self._registered = True

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._follow(), name="broker-presence")
            self._task.add_done_callback(_log_unexpected_end)

    async def wait_synced(self) -> None:
        """Returns once the first full agent list has arrived."""
        await self._synced.wait()

    async def wait_for(self, predicate: Callable[[AgentTable], bool]) -> None:
        """Returns once `predicate(table)` holds; checked after every change of the table."""
        async with self._changed:
            await self._changed.wait_for(lambda: predicate(self._table))

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _follow(self) -> None:
        delay = self._initial_backoff
        failures = 0
        while True:
            try:
                if not self._registered:
                    await self.register()
                await self._read_stream()
                reason = "the server ended the stream"
            except grpc.aio.AioRpcError as exc:
                reason = f"{exc.code().name}: {exc.details()}"
            except Exception as exc:
                # A bug here must not end presence for good: log it loudly and reconnect.
                log.exception("Unexpected failure following agent status")
                reason = repr(exc)
            if not self._table.stale:
                # A stream that delivered its full list counts as a success: start over.
                delay, failures = self._initial_backoff, 0
            self._table.mark_stale()
            await self._notify()
            self._registered = False
            failures += 1
            level = logging.WARNING if failures == 1 else logging.DEBUG
            log.log(
                level,
                "Agent status stream lost (%s); routing with %d last known agents, retry in %.1fs",
                reason,
                len(self._table.agents),
                delay,
            )
            # Jitter, so that brokers cut off together do not all come back at once.
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, self._max_backoff)

    async def _read_stream(self) -> None:
        call = self._status.SubscribeToAgentStatus(
            agent_status_service_pb2.AgentStatusRequest(broker_id=self._broker_id)
        )
        # A full list of many agents comes in pages (more_pages): applied once it is whole, so
        # that the agents of its later pages never look gone in between.
        paging: list[AgentInfo] | None = None
        try:
            async for response in call:
                agents = [agent_from_proto(agent) for agent in response.agents]
                full = response.is_full_update
                if full and response.more_pages:
                    paging = agents
                    continue
                if paging is not None:
                    paging.extend(agents)
                    if response.more_pages:
                        continue
                    agents, full, paging = paging, True, None
                was_stale = self._table.stale
                gone = self._table.apply(agents, full=full)
                for agent_id in gone:
                    self._on_offline(agent_id)
                await self._notify()
                if full and not self._synced.is_set():
                    log.info("Following agent status: %d agents known", len(self._table.agents))
                    self._synced.set()
                elif full and was_stale:
                    log.info("Agent status stream back: %d agents known", len(self._table.agents))
        finally:
            call.cancel()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()


def _log_unexpected_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("Presence follower stopped", exc_info=task.exception())
