"""The server's routing: decisions in `router`, the effects they ask for in `effects`."""

from agentcomm.core.routing.bounces import AnswerEvent, AnswerEventObserver
from agentcomm.core.routing.effects import (
    BusDown,
    Effect,
    Plan,
    Publish,
    PublishFailed,
    QueueMissing,
    SendFrame,
    WaitFor,
)
from agentcomm.core.routing.router import ConversationObserver, RouteObserver, ServerRouter

__all__ = [
    "AnswerEvent",
    "AnswerEventObserver",
    "BusDown",
    "ConversationObserver",
    "Effect",
    "Plan",
    "Publish",
    "PublishFailed",
    "QueueMissing",
    "RouteObserver",
    "SendFrame",
    "ServerRouter",
    "WaitFor",
]
