"""The agent SDK: write an agent in a few lines.

    from agentcomm.sdk import Agent, Message

    agent = Agent("echo")

    @agent.on_message
    async def handle(message: Message) -> str:
        return f"echo: {message.text}"

    agent.run()

See docs/agents.md for streaming replies, asking other agents (`message.ask`), commands,
cancellation and transports.
"""

from agentcomm.sdk.agent import Agent
from agentcomm.sdk.commands import Command, CommandOutcome
from agentcomm.sdk.errors import (
    AgentError,
    AgentOffline,
    AnswerFailed,
    AnswerTimeout,
    CallFailed,
    CallRefused,
    Cancelled,
    ErrorAnswer,
    HandlingAborted,
    HubUnavailable,
    NoAgentAvailable,
    NotRegistered,
    PublishFailed,
    RegistrationRefused,
    WrongBus,
)
from agentcomm.sdk.message import AgentStatus, Message

__all__ = [
    "Agent",
    "AgentError",
    "AgentOffline",
    "AgentStatus",
    "AnswerFailed",
    "AnswerTimeout",
    "CallFailed",
    "CallRefused",
    "Cancelled",
    "Command",
    "CommandOutcome",
    "ErrorAnswer",
    "HandlingAborted",
    "HubUnavailable",
    "Message",
    "NoAgentAvailable",
    "NotRegistered",
    "PublishFailed",
    "RegistrationRefused",
    "WrongBus",
]
