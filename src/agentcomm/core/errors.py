"""Decisions the core refuses, each mapped by the transports to a status code.

HubError
├── UnknownAgent        no agent with that id (gRPC NOT_FOUND, HTTP 404)
├── AgentOffline        the agent exists but cannot take work now (HTTP 409)
├── AgentIdTaken        a live agent of another session holds the id (gRPC ALREADY_EXISTS)
├── NotYourAgent        the caller is not the session that registered the agent
└── CommandTimedOut     the agent did not answer a command in time (HTTP 504)
"""

from __future__ import annotations


class HubError(Exception):
    """Base of the core's refusals."""


class UnknownAgent(HubError):
    def __init__(self, agent_id: str) -> None:
        super().__init__(f"No agent is registered with id {agent_id!r}.")
        self.agent_id = agent_id


class AgentOffline(HubError):
    def __init__(self, agent_id: str, why: str = "is offline") -> None:
        super().__init__(f"Agent {agent_id!r} {why}.")
        self.agent_id = agent_id


class AgentIdTaken(HubError):
    def __init__(self, agent_id: str) -> None:
        super().__init__(
            f"Agent id {agent_id!r} is held by another live session; "
            "choose another id or wait until that agent is offline."
        )
        self.agent_id = agent_id


class NotYourAgent(HubError):
    def __init__(self, agent_id: str) -> None:
        super().__init__(f"Agent {agent_id!r} was registered by another session.")
        self.agent_id = agent_id


class CommandTimedOut(HubError):
    def __init__(self, agent_id: str, command_id: str, timeout: float) -> None:
        super().__init__(
            f"Agent {agent_id!r} did not answer command {command_id} within {timeout:g} s."
        )
        self.agent_id = agent_id
        self.command_id = command_id
