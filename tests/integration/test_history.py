"""Conversation history against a real hub: what is stored as chat goes on, read over HTTP,
who may read what, and a database that is down. On SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentcomm.broker.service import ReferenceBroker
from agentcomm.config import Settings
from agentcomm.core.auth import Authenticator, Role
from agentcomm.history import MessageStatus, NewMessage
from agentcomm.sdk.demo_agents import build_demo_agent
from agentcomm.server.history_feed import ServerHistory
from agentcomm.server.testing import HubEndpoints, running_hub, test_settings
from tests.support.bus import side_bus
from tests.support.frontend import Frontend
from tests.support.waiting import wait_until

WAIT = 10.0
SECRET = "a-test-secret-that-is-long-enough-for-hs256"
AUTH = Authenticator(SECRET)

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(params=["sqlite", "postgresql"])
def history_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'history.sqlite3'}"
    url: str = request.getfixturevalue("postgres_database")
    return url


def history_of(hub: HubEndpoints) -> ServerHistory:
    history = hub.hub.history
    assert history is not None
    return history


@asynccontextmanager
async def chat_stack(settings: Settings, kind: str = "echo") -> AsyncIterator[HubEndpoints]:
    """A hub, the reference broker and one demo agent, all in this process."""
    async with AsyncExitStack() as exits:
        hub = await exits.enter_async_context(running_hub(settings))
        bus = await exits.enter_async_context(side_bus(settings, hub.bus))
        broker = ReferenceBroker(bus, hub.grpc_target, broker_name="history-test-broker")
        await asyncio.wait_for(broker.start(), WAIT)
        exits.push_async_callback(lambda: asyncio.wait_for(broker.stop(), WAIT))
        agent_settings = settings.model_copy(
            update={"grpc_host": "127.0.0.1", "grpc_port": hub.server.grpc_port}
        )
        agent = build_demo_agent(kind, agent_settings, transport="grpc")
        await asyncio.wait_for(agent.start(), WAIT)
        exits.push_async_callback(lambda: asyncio.wait_for(agent.stop(), WAIT))

        def routable() -> bool:
            info = broker.table.agents.get(kind)
            return info is not None and info.is_online

        await wait_until(routable, timeout=WAIT, what=f"the broker to see {kind}")
        yield hub


async def chat(frontend: Frontend, text: str, message_id: str, **fields: Any) -> dict[str, Any]:
    await frontend.send_text(text, message_id=message_id, **fields)
    return await frontend.next(
        lambda frame: (
            frame.get("message_type") in ("REPLY", "ERROR")
            and frame.get("in_reply_to_message_id") == message_id
        ),
        timeout=WAIT,
    )


async def messages_of(
    client: httpx.AsyncClient, conversation: str, **params: Any
) -> dict[str, Any]:
    response = await client.get(f"/api/conversations/{conversation}/messages", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_a_chat_is_kept_and_read_back(history_url: str) -> None:
    user = f"alice-{uuid.uuid4().hex[:8]}"
    settings = test_settings(history_url=history_url)
    async with chat_stack(settings) as hub:
        async with await Frontend.registered(hub.ws_url, user_id=user) as alice:
            first = await chat(alice, "hello", "m-1", conversation_id="c-1")
            second = await chat(alice, "again", "m-2", conversation_id="c-1")
            await chat(alice, "elsewhere", "m-3", conversation_id="c-2")
        await history_of(hub).writer.flush()
        async with httpx.AsyncClient(base_url=hub.http_url, timeout=WAIT) as client:
            listed = await client.get("/api/conversations", params={"user_id": user})
            assert listed.status_code == 200, listed.text
            names = [c["conversation_id"] for c in listed.json()["conversations"]]
            assert names == ["c-2", "c-1"]  # newest first
            body = await messages_of(client, "c-1", user_id=user)
            page = await messages_of(client, "c-1", user_id=user, after=2, limit=1)
            ready = (await client.get("/readyz")).json()
    stored = body["messages"]
    assert [m["seq"] for m in stored] == [1, 2, 3, 4]
    assert [m["message_id"] for m in stored] == [
        "m-1",
        first["message_id"],
        "m-2",
        second["message_id"],
    ]
    assert [m["message_type"] for m in stored] == ["TEXT", "REPLY", "TEXT", "REPLY"]
    assert [m["status"] for m in stored] == ["answered", "final", "answered", "final"]
    assert stored[1]["text_payload"] == "echo: hello"
    assert stored[1]["in_reply_to_message_id"] == "m-1"
    assert stored[0]["receiver_id"] == "" or stored[0]["receiver_id"] is not None
    assert body["last_seq"] == 4
    assert [m["seq"] for m in page["messages"]] == [3]
    assert ready["history"] == "ok"


async def test_a_streamed_answer_is_stored_once_as_its_final_text(tmp_path: Path) -> None:
    settings = test_settings(history_url=f"sqlite:///{tmp_path / 'h.sqlite3'}")
    async with chat_stack(settings, kind="typist") as hub:
        async with await Frontend.registered(
            hub.ws_url, capabilities={"stream": True}, user_id="streamer"
        ) as alice:
            reply = await chat(alice, "stream this please", "m-1", conversation_id="s")
        await history_of(hub).writer.flush()
        async with httpx.AsyncClient(base_url=hub.http_url, timeout=WAIT) as client:
            stored = (await messages_of(client, "s", user_id="streamer"))["messages"]
    assert [m["message_type"] for m in stored] == ["TEXT", "REPLY"]
    assert stored[1]["text_payload"] == reply["text_payload"]


async def test_every_device_of_a_user_shares_its_conversations(tmp_path: Path) -> None:
    settings = test_settings(history_url=f"sqlite:///{tmp_path / 'h.sqlite3'}")
    async with chat_stack(settings) as hub:
        async with await Frontend.registered(hub.ws_url, user_id="carol") as phone:
            await chat(phone, "from the phone", "p-1", conversation_id="trip")
        async with await Frontend.registered(hub.ws_url, user_id="carol") as laptop:
            await chat(laptop, "from the laptop", "l-1", conversation_id="trip")
        await history_of(hub).writer.flush()
        async with httpx.AsyncClient(base_url=hub.http_url, timeout=WAIT) as client:
            stored = (await messages_of(client, "trip", user_id="carol"))["messages"]
            other = await client.get("/api/conversations/trip/messages", params={"user_id": "dave"})
    assert [m["message_id"] for m in stored if m["message_type"] == "TEXT"] == ["p-1", "l-1"]
    assert other.status_code == 404


def _seed(user: str, conversation: str, count: int) -> list[NewMessage]:
    return [
        NewMessage(
            user_id=user,
            conversation_id=conversation,
            message_id=f"{conversation}-{i}",
            message_type="TEXT",
            sender_id="web_x",
            receiver_id="echo",
            text=f"message {i}",
            status=MessageStatus.ACCEPTED,
            at=1000.0 + i,
        )
        for i in range(count)
    ]


async def test_tokens_read_their_own_users_conversations_and_admins_any(
    history_url: str,
) -> None:
    alice, bob = f"alice-{uuid.uuid4().hex[:8]}", f"bob-{uuid.uuid4().hex[:8]}"
    settings = test_settings(history_url=history_url, auth_secret=SECRET)
    async with running_hub(settings) as hub:
        store = history_of(hub).store
        await store.append(_seed(alice, "hers", 3) + _seed(bob, "his", 2))

        def as_(role: Role, sub: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {AUTH.mint(role, sub, 300)}"}

        async with httpx.AsyncClient(base_url=hub.http_url, timeout=WAIT) as client:
            own = await client.get("/api/conversations", headers=as_(Role.FRONTEND, alice))
            read = await client.get(
                "/api/conversations/hers/messages", headers=as_(Role.FRONTEND, alice)
            )
            # The token decides: a frontend naming another user still reads its own.
            foreign = await client.get(
                "/api/conversations/his/messages",
                params={"user_id": bob},
                headers=as_(Role.FRONTEND, alice),
            )
            admin = await client.get(
                "/api/conversations/his/messages", headers=as_(Role.ADMIN, "root")
            )
            agent = await client.get("/api/conversations", headers=as_(Role.AGENT, "echo"))
            anonymous = await client.get("/api/conversations")
            not_hers = await client.delete(
                "/api/conversations/his", headers=as_(Role.FRONTEND, alice)
            )
            deleted = await client.delete(
                "/api/conversations/hers", headers=as_(Role.FRONTEND, alice)
            )
            gone = await client.get(
                "/api/conversations/hers/messages", headers=as_(Role.FRONTEND, alice)
            )
            agents_api = await client.get("/api/agents", headers=as_(Role.FRONTEND, alice))
    assert [c["conversation_id"] for c in own.json()["conversations"]] == ["hers"]
    assert [m["seq"] for m in read.json()["messages"]] == [1, 2, 3]
    assert foreign.status_code == 404
    assert admin.status_code == 200
    assert len(admin.json()["messages"]) == 2
    assert agent.status_code == 403
    assert anonymous.status_code == 401
    assert not_hers.status_code == 404
    assert deleted.status_code == 204
    assert gone.status_code == 404
    assert agents_api.status_code == 403  # the rest of the API stays admin-only


async def test_an_offset_retention_removed_is_unrecoverable(tmp_path: Path) -> None:
    settings = test_settings(history_url=f"sqlite:///{tmp_path / 'h.sqlite3'}")
    async with running_hub(settings) as hub:
        store = history_of(hub).store
        await store.append(_seed("erin", "old", 5))
        await store.expire(before=1003.0)  # the first three go
        async with httpx.AsyncClient(base_url=hub.http_url, timeout=WAIT) as client:
            lost = await client.get(
                "/api/conversations/old/messages", params={"user_id": "erin", "after": 1}
            )
            kept = await messages_of(client, "old", user_id="erin", after=3)
    assert lost.status_code == 410
    assert lost.json()["error_code"] == "unrecoverable"
    assert lost.json()["first_seq"] == 4
    assert [m["seq"] for m in kept["messages"]] == [4, 5]


async def test_a_database_that_is_down_costs_history_not_chat(tmp_path: Path) -> None:
    # Nothing listens on port 1: the store cannot open, and the chat goes on.
    settings = test_settings(history_url="postgresql://postgres@127.0.0.1:1/nowhere")
    async with chat_stack(settings) as hub:
        async with await Frontend.registered(hub.ws_url, user_id="frank") as frank:
            reply = await chat(frank, "still there?", "m-1")
        async with httpx.AsyncClient(base_url=hub.http_url, timeout=WAIT) as client:
            ready = await client.get("/readyz")
            listed = await client.get("/api/conversations")
    assert reply["text_payload"] == "echo: still there?"
    assert ready.status_code == 200, ready.text
    assert ready.json()["history"].startswith("degraded:")
    assert listed.status_code == 503


async def test_history_off_says_so(tmp_path: Path) -> None:
    async with (
        running_hub(test_settings(history_url="none")) as hub,
        httpx.AsyncClient(base_url=hub.http_url, timeout=WAIT) as client,
    ):
        listed = await client.get("/api/conversations")
        ready = (await client.get("/readyz")).json()
    assert listed.status_code == 404
    assert "HISTORY_URL=none" in listed.json()["detail"]
    assert ready["history"] == "off"


async def test_a_socket_asks_for_the_messages_after_a_seq(tmp_path: Path) -> None:
    settings = test_settings(history_url=f"sqlite:///{tmp_path / 'h.sqlite3'}")
    async with running_hub(settings) as hub:
        store = history_of(hub).store
        await store.append(_seed("gina", "long", 5) + _seed("hank", "his", 1))
        await store.append(_seed("gina", "trimmed", 3))
        await store.expire(before=1001.0)  # the first message of each goes
        async with await Frontend.registered(hub.ws_url, user_id="gina") as gina:

            async def ask(conversation: str, after: int, limit: int = 100) -> dict[str, Any]:
                await gina.send(
                    {
                        "message_type": "REQUEST_HISTORY",
                        "message_id": f"h-{conversation}-{after}",
                        "conversation_id": conversation,
                        "after_seq": after,
                        "limit": limit,
                    }
                )
                return await gina.next(
                    lambda f: f.get("in_reply_to_message_id") == f"h-{conversation}-{after}"
                )

            first = await ask("long", 1, limit=2)
            rest = await ask("long", 3)
            lost = await ask("trimmed", 0)
            foreign = await ask("his", 0)
    assert first["message_type"] == "HISTORY", first
    assert [m["seq"] for m in first["messages"]] == [2, 3]
    assert first["has_more"] is True
    assert [m["seq"] for m in rest["messages"]] == [4, 5]
    assert rest["has_more"] is False
    assert rest["last_seq"] == 5
    assert lost["message_type"] == "ERROR"
    assert lost["error_code"] == "unrecoverable"
    assert lost["metadata"] == {"first_seq": 2}
    assert foreign["error_code"] == "unknown_conversation"


async def test_the_sockets_of_a_user_that_follow_it_see_its_conversations_live(
    tmp_path: Path,
) -> None:
    settings = test_settings(history_url="none")
    follow = {"stream": True, "user_frames": True}
    async with (
        chat_stack(settings) as hub,
        await Frontend.registered(hub.ws_url, user_id="ivy", capabilities=follow) as phone,
        await Frontend.registered(hub.ws_url, user_id="ivy", capabilities=follow) as laptop,
        await Frontend.registered(hub.ws_url, user_id="ivy") as old_tab,
        await Frontend.registered(hub.ws_url, user_id="jack", capabilities=follow) as other,
    ):
        reply = await chat(phone, "typed on the phone", "p-1", conversation_id="c")
        seen = await laptop.next(
            lambda f: f.get("message_type") == "REPLY" and f.get("in_reply_to_message_id") == "p-1"
        )
        laptop_frames = laptop.take_buffered()
        # Whatever was sent to the others' sockets by now is in their buffers.
        old_tab_frames = old_tab.non_presence(await old_tab.barrier())
        other_frames = other.non_presence(await other.barrier())
    assert seen["text_payload"] == reply["text_payload"] == "echo: typed on the phone"
    echoes = [f for f in laptop_frames if f.get("message_type") == "TEXT"]
    assert echoes, laptop_frames
    assert {f["message_id"] for f in echoes} == {"p-1"}
    assert echoes[0]["text_payload"] == "typed on the phone"
    assert echoes[0]["routing_status"] == "pending"
    assert old_tab_frames == []  # it did not ask to follow its user
    assert other_frames == []  # another user sees none of it


async def test_a_second_text_asking_reject_is_refused_while_an_answer_runs() -> None:
    settings = test_settings(history_url="none")
    async with (
        chat_stack(settings, kind="typist") as hub,
        httpx.AsyncClient(base_url=hub.http_url, timeout=WAIT) as client,
        await Frontend.registered(hub.ws_url, user_id="kim", capabilities={"stream": True}) as kim,
    ):
        # Slow typing: the first answer is surely still running when the second TEXT comes.
        # The agent registers first and opens its command stream after.
        await wait_until(
            lambda: hub.hub.commands.has_stream("typist"),
            timeout=WAIT,
            what="the typist's command stream",
        )
        paced = await client.post(
            "/api/agents/typist/commands", json={"type": "pace", "parameters": {"ms": "300"}}
        )
        assert paced.status_code == 200, paced.text
        await kim.send_text("a long question", message_id="m-1", conversation_id="c")
        await kim.next(lambda f: f.get("message_type") == "REPLY_CHUNK")
        reject = {"multitask": "reject"}
        await kim.send_text("and another", message_id="m-2", conversation_id="c", metadata=reject)
        busy = await kim.next(
            lambda f: f.get("message_type") == "ERROR" and f.get("in_reply_to_message_id") == "m-2"
        )
        # Another conversation is not busy.
        await kim.send_text("elsewhere", message_id="m-3", conversation_id="d", metadata=reject)
        await kim.send(
            {
                "message_type": "TEXT",
                "message_id": "m-bad",
                "text_payload": "x",
                "metadata": {"multitask": "sometimes"},
            }
        )
        bad = await kim.next(lambda f: f.get("in_reply_to_message_id") == "m-bad")
        first = await chat_final(kim, "m-1", timeout=30.0)
        other = await chat_final(kim, "m-3", timeout=30.0)
        # Once the answer is final, the conversation takes a new TEXT again.
        await client.post(
            "/api/agents/typist/commands", json={"type": "pace", "parameters": {"ms": "5"}}
        )
        again = await chat(kim, "now then", "m-4", conversation_id="c", metadata=reject)
    assert busy["error_code"] == "conversation_busy", busy
    assert first["message_type"] == "REPLY"
    assert other["message_type"] == "REPLY"
    assert bad["error_code"] == "invalid_message"
    assert "multitask" in bad["text_payload"]
    assert again["message_type"] == "REPLY", again


async def chat_final(frontend: Frontend, message_id: str, *, timeout: float) -> dict[str, Any]:
    return await frontend.next(
        lambda frame: (
            frame.get("message_type") in ("REPLY", "ERROR")
            and frame.get("in_reply_to_message_id") == message_id
        ),
        timeout=timeout,
    )
