"""The agent of the `stream` benchmark: an SDK agent that streams made-up tokens.

Each TEXT says what to stream, `"<tokens> <per_s>"`: that many tokens, produced at that rate
(0: as fast as the agent can hand them on). Token i is `t<i> ` — every token ends with one
space, so a frontend counts the tokens a chunk carries by its spaces, however the SDK merged
them. A paced token is produced at `start + i / per_s` on the agent's clock (never drifting
later because one was late), so that a late token is the system's delay, not the pacing's.

`python -m agentcomm.bench.streamer --transport amqp|grpc [--id ID]` with the settings in the
environment; prints one JSON line once registered, then runs until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator, Callable, Sequence

import orjson

from agentcomm.config import load_settings
from agentcomm.logging_setup import configure_logging
from agentcomm.sdk.agent import Agent
from agentcomm.sdk.message import Message
from agentcomm.signals import wait_for_stop_signal

STREAMER_ID = "streamer"
# Answers at once: every concurrent stream of the realistic load has its handler running,
# and each holds its message unacked meanwhile, so the prefetch bounds the streams too. Over
# gRPC the hub takes at most 1000 (ReceiveMessageBatches).
CONCURRENCY = 8192
PREFETCH = {"amqp": 8192, "grpc": 1000}
MAX_TOKENS = 100_000


def parse_request(text: str) -> tuple[int, float]:
    """(tokens, tokens per second) from a TEXT; ValueError with a sentence when malformed."""
    parts = text.split()
    if len(parts) != 2:
        raise ValueError(f"expected '<tokens> <per_s>', got {text[:40]!r}")
    tokens, per_s = int(parts[0]), float(parts[1])
    if not 0 < tokens <= MAX_TOKENS or per_s < 0:
        raise ValueError(f"tokens must be 1-{MAX_TOKENS} and per_s >= 0, got {text[:40]!r}")
    return tokens, per_s


def token(index: int) -> str:
    return f"t{index} "


async def produce(
    tokens: int, per_s: float, clock: Callable[[], float] | None = None
) -> AsyncIterator[str]:
    """The tokens of one answer, paced on absolute times when `per_s` > 0."""
    now = clock or asyncio.get_running_loop().time
    start = now()
    for index in range(tokens):
        if per_s > 0:
            delay = start + index / per_s - now()
            if delay > 0:
                await asyncio.sleep(delay)
        yield token(index)


def build_streamer(agent_id: str, transport: str, merge_ms: float | None = None) -> Agent:
    agent = Agent(
        agent_id,
        agent_id=agent_id,
        capabilities={"kind": "bench-streamer", "streaming": "true"},
        settings=load_settings(),
        transport=transport,
        concurrency=CONCURRENCY,
        prefetch=PREFETCH[transport],
        stream_merge_ms=merge_ms,
    )

    @agent.on_message
    async def stream(message: Message) -> AsyncIterator[str]:
        tokens, per_s = parse_request(message.text)
        async for item in produce(tokens, per_s):
            yield item

    return agent


async def _serve(agent_id: str, transport: str, merge_ms: float | None) -> int:
    agent = build_streamer(agent_id, transport, merge_ms)
    await agent.start()
    try:
        print(orjson.dumps({"registered": agent.id}).decode(), flush=True)
        await wait_for_stop_signal()
    finally:
        await agent.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agentcomm.bench.streamer")
    parser.add_argument("--transport", choices=("amqp", "grpc"), required=True)
    parser.add_argument("--id", default=STREAMER_ID)
    parser.add_argument(
        "--merge-ms", type=float, default=None, help="the agent's stream_merge_ms (default: off)"
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    configure_logging(load_settings())
    from agentcomm.bench.hubproc import _uvloop_if_installed

    with asyncio.Runner(loop_factory=_uvloop_if_installed()) as runner:
        return runner.run(_serve(args.id, args.transport, args.merge_ms))


if __name__ == "__main__":
    raise SystemExit(main())
