"""The asking agent of `agentcomm bench ask`: it answers each message with what the echo agent
answers it, one call to another agent per message (`message.ask`).

`python -m agentcomm.bench.relayproc` with the settings in the environment (GRPC_PORT of the
hub); its work comes over gRPC, like the echo agent's.
"""

from __future__ import annotations

from agentcomm.config import load_settings
from agentcomm.logging_setup import configure_logging
from agentcomm.sdk import Agent, Message

RELAY_ID = "relay"
ASKED_ID = "echo"
# Each message in hand waits for an answer that comes through the same queue: the window must
# hold both at the highest load the benchmark offers (docs/agents.md, prefetch).
CONCURRENCY = 256


def main() -> None:
    settings = load_settings()
    configure_logging(settings)
    agent = Agent(
        RELAY_ID,
        agent_id=RELAY_ID,
        settings=settings,
        transport="grpc",
        concurrency=CONCURRENCY,
        prefetch=1000,  # the most the hub gives an agent at once
        max_calls_in_flight=CONCURRENCY,
    )

    @agent.on_message
    async def relay(message: Message) -> str:
        return await message.ask(ASKED_ID, message.text)

    agent.run()


if __name__ == "__main__":
    main()
