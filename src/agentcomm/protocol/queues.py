"""Queue names of the bus (PROTOCOL §4), defined once."""

from __future__ import annotations

BROKER_INPUT_QUEUE = "broker_input_queue"
SERVER_INPUT_QUEUE = "server_input_queue"
SERVER_ADVERTISEMENT_QUEUE = "server_advertisement_queue"
AGENT_METADATA_QUEUE = "agent_metadata_queue"
AGENT_QUEUE_PREFIX = "agent_queue_"
# Per-server queue: messages for a frontend whose socket another server process holds.
SERVER_QUEUE_PREFIX = "server_queue_"


def agent_queue(agent_id: str) -> str:
    return AGENT_QUEUE_PREFIX + agent_id


def server_queue(server_tag: str) -> str:
    """The queue of the server whose frontends' ids start with `server_tag`."""
    return SERVER_QUEUE_PREFIX + server_tag


# Per-server queue of what one hub asks of another: operator commands for agents it holds.
HUB_QUEUE_PREFIX = "hub_queue_"
# The broadcast topic on which hubs share presence (a fanout on RabbitMQ).
PRESENCE_TOPIC = "presence"


def hub_queue(server_tag: str) -> str:
    """The queue on which the hub tagged `server_tag` takes requests of its peers."""
    return HUB_QUEUE_PREFIX + server_tag
