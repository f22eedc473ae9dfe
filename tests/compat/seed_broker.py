"""A broker that behaves as the described system's broker does (`shared/seed/server-README.md`,
flows 3 and 4, and its wire format as its users see it), so that the hub can be tried against
it without its code.

What it does, and nothing more:
- registers over gRPC (`RegisterBroker`) and follows `SubscribeToAgentStatus`: the agents it
  knows are those online;
- consumes `broker_input_queue`; a message whose `receiver_id` is a known agent is passed on
  to `server_input_queue` as it is, marked `routing_status: routed`; a frontend's `TEXT` that
  names no receiver goes to an online agent other than its sender (the first by id), or, when
  there is none, comes back refused;
- everything else comes back refused — an agent's answer addressed to a frontend too: it is
  published to `server_input_queue` as `{"message_type": "ERROR", "message_id": <kept>,
  "sender_id": <kept>, "receiver_id": "Server", "routing_status": "error", "text_payload":
  <kept>, "routing_status_message": <why>}`, with no `error_code`, no
  `in_reply_to_message_id` and none of the internal fields.

Messages are plain JSON dicts here, as that system's broker handles them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from agentcomm.bus.base import Bus, Delivery, Subscription
from tests.support.agent import GrpcBroker
from tests.support.bus import BROKER_INPUT_QUEUE, SERVER_INPUT_QUEUE, publish_json
from tests.support.waiting import DEFAULT_TIMEOUT, wait_until

Message = dict[str, Any]

NO_AGENT_SENTENCE = "No other online agents available to handle the message."


def refused(message: Message, why: str) -> Message:
    """The message sent back to the server, the way that broker does it."""
    return {
        "message_id": message.get("message_id"),
        "message_type": "ERROR",
        "sender_id": message.get("sender_id"),
        "receiver_id": "Server",
        "routing_status": "error",
        "text_payload": message.get("text_payload"),
        "routing_status_message": why,
    }


class SeedBroker:
    def __init__(self, bus: Bus, grpc_target: str, broker_id: str = "broker_seed") -> None:
        self.bus = bus
        self.broker_id = broker_id
        self.online: set[str] = set()
        self.seen: list[Message] = []
        self.sent: list[Message] = []
        self._grpc = GrpcBroker(grpc_target, broker_id)
        self._follower: asyncio.Task[None] | None = None
        self._subscription: Subscription | None = None

    async def start(self) -> SeedBroker:
        await self._grpc.register("seed broker")
        stream = self._grpc.subscribe()
        self._follower = asyncio.create_task(self._follow(stream.items), name="seed-presence")
        async with asyncio.timeout(DEFAULT_TIMEOUT * 2):
            for queue in (BROKER_INPUT_QUEUE, SERVER_INPUT_QUEUE):
                await self.bus.declare_queue(queue)
            self._subscription = await self.bus.consume(BROKER_INPUT_QUEUE, self._route)
        return self

    async def stop(self) -> None:
        if self._subscription is not None:
            async with asyncio.timeout(DEFAULT_TIMEOUT):
                await self._subscription.cancel()
            self._subscription = None
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                async with asyncio.timeout(DEFAULT_TIMEOUT):
                    await self._follower
        await self._grpc.close()

    async def knows(self, agent_id: str, *, timeout: float = DEFAULT_TIMEOUT * 2) -> None:
        await wait_until(
            lambda: agent_id in self.online, timeout=timeout, what=f"the broker to know {agent_id}"
        )

    async def _follow(self, updates: asyncio.Queue[Any]) -> None:
        while True:  # ends when stop() cancels it
            update = await updates.get()
            if update.is_full_update:
                self.online.clear()
            for agent in update.agents:
                if agent.is_online:
                    self.online.add(agent.agent_id)
                else:
                    self.online.discard(agent.agent_id)

    async def _route(self, delivery: Delivery) -> None:
        message: Message = json.loads(delivery.body)
        self.seen.append(message)
        out = self._decide(message)
        self.sent.append(out)
        await publish_json(self.bus, SERVER_INPUT_QUEUE, out)

    def _decide(self, message: Message) -> Message:
        receiver = str(message.get("receiver_id") or "")
        sender = str(message.get("sender_id") or "")
        if receiver in self.online:
            return {**message, "routing_status": "routed"}
        asks_anyone = receiver.strip().lower() in ("", "server")
        if message.get("message_type") == "TEXT" and sender.startswith("web_") and asks_anyone:
            others = sorted(agent for agent in self.online if agent != sender)
            if not others:
                return refused(message, NO_AGENT_SENTENCE)
            return {**message, "receiver_id": others[0], "routing_status": "routed"}
        return refused(message, f"Receiver {receiver or '(none)'} is not an online agent.")
