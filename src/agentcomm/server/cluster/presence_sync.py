"""Presence shared between the hubs of a cluster, over the bus's `presence` broadcast.

This hub reports what it knows first-hand — its agents (with the session that registered each)
and its brokers — and merges what its peers report into `ClusterPresence`:
- a change is reported at once (the changes of one turn of the event loop in one report);
- a full report every `refresh` seconds renews the lease (AGENT_TIMEOUT) that keeps this hub's
  agents online at its peers, and mends anything a peer missed;
- at start, and after the bus reconnected, the report asks every peer for a full one back, so a
  hub that joins late has the whole picture at once;
- at a graceful stop the report says the hub is leaving; a hub that dies says nothing, and its
  peers drop it when its lease runs out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from agentcomm.bus.base import Bus, BusError, Delivery, Subscription
from agentcomm.core.brokers import BrokerRegistry
from agentcomm.core.cluster_presence import ClusterPresence
from agentcomm.core.presence import AgentRegistry
from agentcomm.protocol.cluster import HubAgent, HubBroker, HubReport
from agentcomm.protocol.codec import encode_for_bus, parse_json_object, validate_model
from agentcomm.protocol.errors import ProtocolError
from agentcomm.protocol.models import AgentInfo
from agentcomm.protocol.queues import PRESENCE_TOPIC

log = logging.getLogger(__name__)


class PresenceSync:
    def __init__(
        self,
        bus: Bus,
        *,
        server_id: str,
        registry: AgentRegistry,
        brokers: BrokerRegistry,
        cluster: ClusterPresence,
        lease_seconds: float,
        websocket_url: Callable[[], str],
        grpc_address: Callable[[], str],
    ) -> None:
        self._bus = bus
        self._server_id = server_id
        self._registry = registry
        self._brokers = brokers
        self._cluster = cluster
        self._lease = lease_seconds
        self._websocket_url = websocket_url
        self._grpc_address = grpc_address
        self._seq = 0
        # Agents whose change is not reported yet; None: a full report is due.
        self._changed: set[str] | None = set()
        self._wants_full = False
        self._wake = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        self._listening: Subscription | None = None
        self._malformed_seen = False
        self._stopping = False
        registry.subscribe(self._local_changed)

    @property
    def refresh_seconds(self) -> float:
        """How often the full report renews this hub's lease: well within it."""
        return max(0.2, min(5.0, self._lease / 4))

    async def start(self) -> None:
        self._listening = await self._bus.listen(PRESENCE_TOPIC, self._on_report)
        self._bus.on_reconnect(self._rejoin)
        self._sender = asyncio.create_task(self._send_reports(), name="presence-sync")
        # Joined: every peer answers with its full report, and hears of this hub's agents.
        self._rejoin()

    async def stop(self) -> None:
        """Tells the peers this hub leaves, then stops listening."""
        self._stopping = True
        if self._sender is not None:
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)
        try:
            await self._publish(self._report(full=True, leaving=True))
        except BusError as exc:
            log.info("Could not tell the other hubs that this one leaves: %s", exc)
        if self._listening is not None:
            await self._listening.cancel()

    def renew(self) -> None:
        """Time for a full report (periodically, from the hub's owned tasks)."""
        self._changed = None
        self._wake.set()

    def _rejoin(self) -> None:
        self._wants_full = True
        self.renew()

    def _local_changed(self, delta: list[AgentInfo]) -> None:
        if self._changed is not None:
            self._changed.update(info.agent_id for info in delta)
        self._wake.set()

    async def _send_reports(self) -> None:
        while True:
            await self._wake.wait()
            # The changes of this turn of the loop go in one report.
            await asyncio.sleep(0)
            self._wake.clear()
            changed, self._changed = self._changed, set()
            full = changed is None
            report = self._report(full=full, only=changed)
            if full:
                report.wants_full, self._wants_full = self._wants_full, False
            try:
                await self._publish(report)
            except BusError as exc:
                # Sent again in full once the bus is back (on_reconnect), or at the next renewal.
                log.warning("Could not share presence with the other hubs: %s", exc)
                self._changed = None

    def _report(
        self, *, full: bool, only: set[str] | None = None, leaving: bool = False
    ) -> HubReport:
        self._seq += 1
        agents: list[HubAgent] = []
        if not leaving:
            ids = None if full else only
            for info in self._registry.snapshot() if ids is None else self._infos(ids):
                record = self._registry.get(info.agent_id)
                if record is not None:
                    agents.append(HubAgent(info=info, session=record.session))
        brokers = [
            HubBroker(
                broker_id=record.broker_id,
                broker_name=record.broker_name,
                is_online=record.is_online,
            )
            for record in self._brokers.all()
        ]
        return HubReport(
            server_id=self._server_id,
            seq=self._seq,
            full=full,
            agents=agents,
            brokers=[] if leaving else brokers,
            lease_seconds=self._lease,
            websocket_url=self._websocket_url(),
            grpc_address=self._grpc_address(),
            leaving=leaving,
        )

    def _infos(self, agent_ids: set[str]) -> list[AgentInfo]:
        records = (self._registry.get(agent_id) for agent_id in sorted(agent_ids))
        return [record.info() for record in records if record is not None]

    async def _publish(self, report: HubReport) -> None:
        await self._bus.broadcast(
            PRESENCE_TOPIC, encode_for_bus(report), message_id=report.message_id
        )

    async def _on_report(self, delivery: Delivery) -> None:
        try:
            report = validate_model(HubReport, parse_json_object(delivery.body))
        except ProtocolError as exc:
            if not self._malformed_seen:
                # Once: a peer that sends nonsense would otherwise fill the log.
                log.warning("Ignoring a malformed presence report on the bus: %s", exc.text)
                self._malformed_seen = True
            return
        if report.server_id == self._server_id:
            return
        if report.wants_full and not self._stopping:
            self.renew()
        self._cluster.apply(report)
