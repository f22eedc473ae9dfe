"""An echo agent for the fault tests that can be made slow or made to die, on the SDK.

It answers "echo: <text>". A text starting with "slow <seconds>" is answered after that long
(so that the process can be killed with the message in hand); a text starting with "poison"
ends the process at once, every time, with the message in hand. Settings come from the
environment like any agentcomm process (GRPC_HOST, GRPC_PORT, MESSAGE_BUS, RABBITMQ_VHOST ...).

Run: .venv/bin/python tests/reliability/agents/crashy.py <agent_id> grpc|amqp
"""

from __future__ import annotations

import asyncio
import os
import sys

from agentcomm.config import load_settings
from agentcomm.logging_setup import configure_logging
from agentcomm.sdk import Agent, Message

POISON_EXIT_CODE = 3


def main() -> None:
    agent_id, transport = sys.argv[1], sys.argv[2]
    settings = load_settings()
    configure_logging(settings)
    agent = Agent(agent_id, agent_id=agent_id, settings=settings, transport=transport)

    @agent.on_message
    async def answer(message: Message) -> str:
        words = message.text.split()
        if words[:1] == ["poison"]:
            print(f"poisoned by {message.message_id}", flush=True)
            os._exit(POISON_EXIT_CODE)
        if words[:1] == ["slow"] and len(words) > 1:
            print(f"working slowly on {message.message_id}", flush=True)
            await asyncio.sleep(float(words[1]))
        return f"echo: {message.text}"

    agent.run()


if __name__ == "__main__":
    main()
