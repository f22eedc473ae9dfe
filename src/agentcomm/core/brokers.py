"""Brokers known to this server: registered over gRPC or announced on the bus."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from agentcomm.core.clock import Clock
from agentcomm.protocol.timestamps import to_iso


@dataclass
class BrokerRecord:
    broker_id: str
    broker_name: str
    registered_via: str
    last_seen: datetime
    subscribed_streams: int = 0

    @property
    def is_online(self) -> bool:
        return self.subscribed_streams > 0

    def as_json(self) -> dict[str, object]:
        return {
            "broker_id": self.broker_id,
            "broker_name": self.broker_name,
            "registered_via": self.registered_via,
            "last_seen": to_iso(self.last_seen),
            "is_online": self.is_online,
        }


class BrokerRegistry:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._brokers: dict[str, BrokerRecord] = {}

    def register(self, broker_id: str, broker_name: str, via: str) -> BrokerRecord:
        record = self._brokers.get(broker_id)
        if record is None:
            record = BrokerRecord(broker_id, broker_name or broker_id, via, self._clock.now())
            self._brokers[broker_id] = record
        else:
            record.broker_name = broker_name or record.broker_name
            record.registered_via = via
            record.last_seen = self._clock.now()
        return record

    def stream_opened(self, broker_id: str) -> None:
        record = self._brokers.get(broker_id) or self.register(
            broker_id, broker_id, "status stream"
        )
        record.subscribed_streams += 1
        record.last_seen = self._clock.now()

    def stream_closed(self, broker_id: str) -> None:
        record = self._brokers.get(broker_id)
        if record is not None:
            record.subscribed_streams = max(0, record.subscribed_streams - 1)
            record.last_seen = self._clock.now()

    def get(self, broker_id: str) -> BrokerRecord | None:
        return self._brokers.get(broker_id)

    def all(self) -> list[BrokerRecord]:
        return list(self._brokers.values())
