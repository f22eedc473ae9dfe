"""The agent SDK: write an agent in a few lines.

    from agentcomm.sdk import Agent, Message

    agent = Agent("echo")

    @agent.on_message
    async def handle(message: Message) -> str:
        return f"echo: {message.text}"

    agent.run()

See docs/agents.md for streaming replies, commands, cancellation and transports.
"""

from agentcomm.sdk.agent import Agent
from agentcomm.sdk.commands import Command, CommandOutcome
from agentcomm.sdk.errors import (
    AgentError,
    ErrorAnswer,
    HandlingAborted,
    HubUnavailable,
    NotRegistered,
    PublishFailed,
    RegistrationRefused,
    WrongBus,
)
from agentcomm.sdk.message import AgentStatus, Message

__all__ = [
    "Agent",
    "AgentError",
    "AgentStatus",
    "Command",
    "CommandOutcome",
    "ErrorAnswer",
    "HandlingAborted",
    "HubUnavailable",
    "Message",
    "NotRegistered",
    "PublishFailed",
    "RegistrationRefused",
    "WrongBus",
]
