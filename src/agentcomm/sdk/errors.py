"""What can go wrong in an agent, as one small tree.

AgentError
├── HubUnavailable        the server or the bus cannot be reached now; retried with backoff
├── NotRegistered         the server does not know this agent (it restarted); re-register
├── RegistrationRefused   the server refused this agent (its id is held by another process,
│                         or the request was invalid); retrying will not help
├── WrongBus              the agent consumes a bus that is not the hub's (its queue is not
│                         there); it unregisters and stops, retrying will not help
├── PublishFailed         an outgoing message could not be handed over
└── HandlingAborted       the agent stopped before it finished a message; it is given back
"""

from __future__ import annotations

from agentcomm.protocol.vocabulary import ErrorCode


class AgentError(Exception):
    """Base of every error the SDK raises."""


class HubUnavailable(AgentError):
    """The server or the bus cannot be reached right now."""


class NotRegistered(AgentError):
    """The server does not know this agent any more, usually because it restarted."""


class RegistrationRefused(AgentError):
    """The server refused to register this agent."""


class WrongBus(AgentError):
    """The bus the agent consumes has no queue for it: the hub runs on another one."""


class PublishFailed(AgentError):
    """A reply, chunk or error could not be handed to the server or the bus."""


class HandlingAborted(AgentError):
    """The agent stopped before it finished a message; the message goes back to its queue."""


class ErrorAnswer(Exception):
    """Raised by a message handler to answer with `ERROR <code>` and this sentence (any other
    exception answers `internal`). Not an AgentError: nothing went wrong in the SDK."""

    def __init__(self, code: ErrorCode, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text
