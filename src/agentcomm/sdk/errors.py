"""What can go wrong in an agent, as one small tree.

AgentError
├── HubUnavailable        the server or the bus cannot be reached now; retried with backoff
├── NotRegistered         the server does not know this agent (it restarted); re-register
├── RegistrationRefused   the server refused this agent (its id is held by another process,
│                         or the request was invalid); retrying will not help
├── WrongBus              the agent consumes a bus that is not the hub's (its queue is not
│                         there); it unregisters and stops, retrying will not help
├── PublishFailed         an outgoing message could not be handed over
├── HandlingAborted       the agent stopped before it finished a message; it is given back
└── CallFailed            a call to another agent (`ask`) ended without an answer; `error_code`
    │                     is the code of the ERROR that ended it
    ├── AgentOffline          agent_offline: the agent asked is not registered, or offline
    ├── NoAgentAvailable      no_agent_available: no online agent has the capabilities asked for
    ├── Cancelled             cancelled: the agent asked, or someone for it, cancelled the call
    ├── AnswerTimeout         answer_timeout: no answer within the call's timeout
    ├── CallRefused           call_cycle, hop_limit, too_many_calls, unknown_receiver, …: the
    │                         call was not made (a cycle, a chain too long, too many at once)
    └── AnswerFailed          internal (or another code): the agent asked failed on it
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


class CallFailed(AgentError):
    """A call to another agent ended in an ERROR (or in none, within its timeout)."""

    def __init__(self, error_code: str, text: str, *, agent_id: str | None = None) -> None:
        super().__init__(text)
        self.error_code = error_code
        self.text = text
        # The agent asked, when the call named one (or an answer came from one).
        self.agent_id = agent_id


class AgentOffline(CallFailed):
    """The agent asked is not registered, or offline, or paused."""


class NoAgentAvailable(CallFailed):
    """No online agent has the capabilities the call asked for."""


class Cancelled(CallFailed):
    """The call was cancelled by the agent asked, or on its behalf (not by this handler: a
    handler that is cancelled itself sees asyncio.CancelledError)."""


class AnswerTimeout(CallFailed):
    """No answer came within the call's timeout; the call was cancelled."""


class CallRefused(CallFailed):
    """The call was not made: it would close a cycle, make a chain longer than MAX_HOPS, or
    exceed the asker's calls in flight; or it names no one it may go to."""


class AnswerFailed(CallFailed):
    """The agent asked failed to answer (ERROR internal, or a code this SDK does not know)."""


_BY_CODE: dict[str, type[CallFailed]] = {
    "agent_offline": AgentOffline,
    # An outside A2A agent behind the bridge that cannot be reached is offline as far as the
    # asker can tell; one that failed the task (remote_failed) failed to answer.
    "remote_unavailable": AgentOffline,
    "no_agent_available": NoAgentAvailable,
    "cancelled": Cancelled,
    "answer_timeout": AnswerTimeout,
    "call_cycle": CallRefused,
    "hop_limit": CallRefused,
    "too_many_calls": CallRefused,
    "unknown_receiver": CallRefused,
    "invalid_message": CallRefused,
    "unsupported_type": CallRefused,
    "too_large": CallRefused,
}


def call_error(error_code: str, text: str, *, agent_id: str | None = None) -> CallFailed:
    """The exception for a call that ended in an ERROR with `error_code`."""
    kind = _BY_CODE.get(error_code, AnswerFailed)
    return kind(error_code, text, agent_id=agent_id)
