"""What the hubs of one cluster tell each other on the bus (docs/protocol.md, "Between hubs").

Internal: these never reach a frontend, an agent or a broker. A hub reports what it knows
first-hand — the agents registered with it, the brokers subscribed to it — as a lease that runs
out unless renewed: a hub that dies without a word has its agents shown offline once its last
report is older than its `lease_seconds`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from agentcomm.protocol.ids import ID_PATTERN, new_message_id
from agentcomm.protocol.models import MAX_MAP_ENTRIES, MAX_NAME_CHARS, AgentInfo, WireModel
from agentcomm.protocol.vocabulary import MessageType


class HubAgent(WireModel):
    """An agent as the hub it registered with knows it."""

    info: AgentInfo
    # Which process registered it (the agentcomm-session header, or its connection): the same
    # process may move to another hub, another process may not take a live id.
    session: str = Field(max_length=300)


class HubBroker(WireModel):
    broker_id: str = Field(min_length=1, max_length=300)
    broker_name: str = Field(default="", max_length=MAX_NAME_CHARS)
    is_online: bool = False


class HubReport(WireModel):
    """HUB_PRESENCE: one hub's first-hand presence, broadcast on the `presence` topic."""

    message_type: Literal[MessageType.HUB_PRESENCE] = MessageType.HUB_PRESENCE
    message_id: str = Field(default_factory=new_message_id, pattern=ID_PATTERN)
    server_id: str = Field(pattern=ID_PATTERN)
    # Counts up with every report of this hub: an older report arriving late is ignored.
    seq: int = Field(ge=0)
    # Every agent of the hub (what the receiver knew of it is replaced), or only those that
    # changed.
    full: bool
    agents: list[HubAgent] = Field(default_factory=list)
    # Always every broker of the hub: there are few.
    brokers: list[HubBroker] = Field(default_factory=list, max_length=MAX_MAP_ENTRIES * 16)
    # The report stands for this long; the hub sends another well before.
    lease_seconds: float = Field(gt=0)
    websocket_url: str = Field(default="", max_length=2048)
    grpc_address: str = Field(default="", max_length=2048)
    # The hub stops: its agents and brokers are gone with it (unless they reconnect elsewhere).
    leaving: bool = False
    # The hub has just (re)joined: every other hub answers with a full report.
    wants_full: bool = False


class HubCommand(WireModel):
    """HUB_COMMAND: run an operator command on an agent the receiving hub holds."""

    message_type: Literal[MessageType.HUB_COMMAND] = MessageType.HUB_COMMAND
    message_id: str = Field(default_factory=new_message_id, pattern=ID_PATTERN)
    # Where the result goes: the asking hub's tag (its hub queue).
    reply_to: str = Field(min_length=1, max_length=64)
    agent_id: str = Field(pattern=ID_PATTERN)
    type: str = Field(min_length=1, max_length=64)
    content: str = Field(default="", max_length=65536)
    parameters: dict[str, str] = Field(default_factory=dict, max_length=MAX_MAP_ENTRIES)
    timeout: float = Field(gt=0)


class HubCommandResult(WireModel):
    """HUB_COMMAND_RESULT: what became of a HUB_COMMAND (`in_reply_to` is its message_id)."""

    message_type: Literal[MessageType.HUB_COMMAND_RESULT] = MessageType.HUB_COMMAND_RESULT
    message_id: str = Field(default_factory=new_message_id, pattern=ID_PATTERN)
    in_reply_to: str = Field(pattern=ID_PATTERN)
    # The outcome, or why there is none: unknown_agent, agent_offline, timeout.
    refusal: Literal["unknown_agent", "agent_offline", "timeout"] | None = None
    refusal_text: str = Field(default="", max_length=1024)
    command_id: str = Field(default="", max_length=128)
    success: bool = False
    output: str = Field(default="", max_length=1_000_000)
    error_message: str = Field(default="", max_length=65536)
    exit_code: int = 0
    execution_time_ms: int = 0
