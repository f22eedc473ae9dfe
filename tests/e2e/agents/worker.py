"""A test agent on the SDK with capabilities and a pace of its own, for the end-to-end tests.

It streams "<its id> heard: <text>" back word by word (REPLY_CHUNKs, then the whole REPLY), so
a test can tell from a reply which agent wrote it. Settings come from the environment like any
agentcomm process (GRPC_HOST, GRPC_PORT, MESSAGE_BUS, RABBITMQ_VHOST, ...), plus:

- E2E_AGENT_ID: its name and id (required)
- E2E_CAPABILITIES: a JSON object of strings, what it advertises (default {})
- E2E_MS_PER_WORD: milliseconds before each word (default 20); a message may ask for another
  pace with metadata {"ms_per_word": "<ms>"}
- E2E_TRANSPORT: "grpc" or "amqp" (default: the SDK's choice for MESSAGE_BUS)

A message with metadata {"asks": [first, second, ...]} makes it ask `first` (an agent id, or
"name=value" for an agent with that capability) instead, passing the rest of the list on, and
stream back what it answers after "<its id> asked <first>: ". A handler cancelled logs
"<its id> cancelled <message id>".

Run: .venv/bin/python tests/e2e/agents/worker.py
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator

from agentcomm.config import load_settings
from agentcomm.logging_setup import configure_logging
from agentcomm.sdk import Agent, Message


def reply_text(agent_id: str, text: str) -> str:
    return f"{agent_id} heard: {text}"


def main() -> None:
    agent_id = os.environ["E2E_AGENT_ID"]
    capabilities = json.loads(os.environ.get("E2E_CAPABILITIES") or "{}")
    default_ms = int(os.environ.get("E2E_MS_PER_WORD") or "20")
    settings = load_settings()
    configure_logging(settings)
    agent = Agent(
        agent_id,
        agent_id=agent_id,
        capabilities={str(k): str(v) for k, v in capabilities.items()},
        settings=settings,
        transport=os.environ.get("E2E_TRANSPORT") or None,
    )

    @agent.on_message
    async def answer(message: Message) -> AsyncIterator[str]:
        try:
            asks = message.metadata.get("asks") or []
            if asks:
                async for piece in ask_on(message, asks):
                    yield piece
                return
            seconds = int(message.metadata.get("ms_per_word") or default_ms) / 1000
            words = reply_text(agent_id, message.text).split(" ")
            for index, word in enumerate(words):
                await asyncio.sleep(seconds)
                yield word if index == len(words) - 1 else word + " "
        except (asyncio.CancelledError, GeneratorExit):
            # GeneratorExit: cancelled between two pieces, the generator is closed instead.
            logging.getLogger("e2e.worker").info("%s cancelled %s", agent_id, message.message_id)
            raise

    async def ask_on(message: Message, asks: list[str]) -> AsyncIterator[str]:
        first, rest = asks[0], asks[1:]
        name, by_capability, value = first.partition("=")
        metadata = {"asks": rest, "ms_per_word": message.metadata.get("ms_per_word") or ""}
        yield f"{agent_id} asked {first}: "
        pieces = message.ask_stream(
            None if by_capability else first,
            message.text,
            capability={name: value} if by_capability else None,
            metadata=metadata,
        )
        async for piece in pieces:
            yield piece

    agent.run()


if __name__ == "__main__":
    main()
