"""Small SDK parts: backoff, the bounded id memory, reply envelopes, transport choice, demos."""

from __future__ import annotations

import asyncio
import random

import grpc
import orjson
import pytest

from agentcomm.bus.memory import InMemoryBus
from agentcomm.config import Settings
from agentcomm.protocol import Envelope, ErrorCode, MessageType, encode_for_bus
from agentcomm.sdk import envelopes
from agentcomm.sdk.agent import choose_transport, grpc_target
from agentcomm.sdk.backoff import Backoff
from agentcomm.sdk.dedup import RecentIds
from agentcomm.sdk.demo_agents import build_demo_agent, typist_answer
from agentcomm.sdk.errors import HubUnavailable
from agentcomm.sdk.hub_client import GrpcHubClient
from agentcomm.sdk.output_stream import OutputResult


def test_backoff_doubles_up_to_the_cap_and_starts_over_after_reset() -> None:
    backoff = Backoff(initial=1.0, cap=8.0, jitter=0.0)
    assert [backoff.next_delay() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    backoff.reset()
    assert backoff.next_delay() == 1.0


def test_backoff_jitter_stays_within_its_spread_and_the_cap() -> None:
    backoff = Backoff(initial=1.0, cap=4.0, jitter=0.2, rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(50)]
    assert all(0.8 <= d <= 4.0 for d in delays)
    assert len(set(delays)) > 1


def test_backoff_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="initial"):
        Backoff(initial=0)


def test_recent_ids_forget_the_oldest_first() -> None:
    ids = RecentIds(capacity=3)
    for name in "abcd":
        ids.add(name)
    assert "a" not in ids
    assert all(name in ids for name in "bcd")
    ids.add("b")  # used again: now the newest
    ids.add("e")
    assert "c" not in ids
    assert "b" in ids
    assert len(ids) == 3


def test_a_reply_keeps_the_internal_fields_on_the_bus() -> None:
    incoming = Envelope(
        message_type=MessageType.TEXT,
        message_id="m1",
        sender_id="web_1",
        _client_id="web_1",
        _server_id="server_9",
    )
    wire = orjson.loads(encode_for_bus(envelopes.reply(incoming, "a1", "hi")))
    assert wire["_client_id"] == "web_1"
    assert wire["_server_id"] == "server_9"
    assert wire["routing_status"] == "pending"
    assert wire["message_type"] == "REPLY"


def test_a_reply_to_a_message_without_internal_fields_has_none() -> None:
    incoming = Envelope(message_type=MessageType.TEXT, message_id="m1", sender_id="agent_b")
    wire = orjson.loads(encode_for_bus(envelopes.error(incoming, "a1", ErrorCode.INTERNAL, "x")))
    assert "_client_id" not in wire
    assert wire["receiver_id"] == "agent_b"
    assert wire["error_code"] == "internal"


def settings(bus: str) -> Settings:
    return Settings(message_bus=bus)  # type: ignore[arg-type]


def test_the_transport_follows_the_bus_unless_chosen() -> None:
    assert choose_transport(None, settings("rabbitmq"), None) == "amqp"
    assert choose_transport(None, settings("memory"), None) == "grpc"
    assert choose_transport(None, settings("memory"), InMemoryBus()) == "memory"
    assert choose_transport("amqp", settings("memory"), InMemoryBus()) == "memory"
    assert choose_transport("grpc", settings("rabbitmq"), None) == "grpc"


def test_impossible_transport_choices_are_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="shared in-process bus"):
        choose_transport("amqp", settings("memory"), None)
    with pytest.raises(ValueError, match="only used with transport 'amqp'"):
        choose_transport("grpc", settings("memory"), InMemoryBus())
    with pytest.raises(ValueError, match="Unknown transport"):
        choose_transport("carrier-pigeon", settings("memory"), None)


def test_the_typist_answer_is_a_sentence_about_the_input() -> None:
    assert typist_answer("hello   world") == (
        'You wrote 2 words: "hello world". I am typing them back one word at a time.'
    )
    assert typist_answer("one").startswith("You wrote 1 word:")
    assert "empty" in typist_answer("  ")


def test_demo_agents_are_named_after_their_kind_by_default() -> None:
    echo = build_demo_agent("echo", settings("memory"))
    typist = build_demo_agent("typist", settings("memory"), name="T", agent_id="typist-2")
    assert (echo.name, echo.transport) == ("echo", "grpc")
    assert typist.name == "T"
    with pytest.raises(ValueError, match="Unknown demo agent"):
        build_demo_agent("poet", settings("memory"))


def test_agents_dial_loopback_when_the_grpc_host_is_a_wildcard() -> None:
    assert grpc_target(Settings(grpc_host="0.0.0.0", grpc_port=7)) == "127.0.0.1:7"
    assert grpc_target(Settings(grpc_host="hub.example", grpc_port=7)) == "hub.example:7"


def test_the_public_names_are_all_there() -> None:
    import agentcomm.sdk as sdk

    assert sdk.__all__ == sorted(sdk.__all__)
    for name in sdk.__all__:
        assert getattr(sdk, name) is not None, name


async def test_an_output_without_a_result_in_time_fails_as_hub_unavailable() -> None:
    client = GrpcHubClient("127.0.0.1:1", "session-timeout", call_timeout=0.01)
    try:
        never: asyncio.Future[OutputResult] = asyncio.get_running_loop().create_future()
        with pytest.raises(HubUnavailable, match="no result within"):
            await asyncio.wait_for(client._result_of(never), 5.0)
        answered: asyncio.Future[OutputResult] = asyncio.get_running_loop().create_future()
        result = OutputResult(grpc.StatusCode.OK, "", accepted=True, acknowledged=True)
        answered.set_result(result)
        assert await client._result_of(answered) is result
    finally:
        await client.close()
