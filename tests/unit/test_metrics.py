"""The hub's message counter counts every message under its own type and source."""

from __future__ import annotations

from agentcomm.server.metrics import HubMetrics


def test_messages_are_counted_by_type_and_source() -> None:
    metrics = HubMetrics()
    for _ in range(3):
        metrics.count_message("TEXT", "pending")
    metrics.count_message("REPLY", "delivered")
    text = metrics.render().decode()
    assert 'agentcomm_messages_total{message_type="TEXT",source="pending"} 3.0' in text
    assert 'agentcomm_messages_total{message_type="REPLY",source="delivered"} 1.0' in text
