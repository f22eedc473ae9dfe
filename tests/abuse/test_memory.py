"""Attacks on the hub's memory (issue 21, rows 1, 1b, 2 and 4): each holds the hub's resident
memory within a bound of what it had before, and a bystander talking to `echo` meanwhile gets
every answer.

The bounds are generous multiples of what was measured (docs/reliability.md): far below what
the same attacks cost before the hub bounded its buffers in bytes (hundreds of MB each).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from agentcomm.generated import agent_registration_service_pb2 as reg_pb
from agentcomm.generated import agent_registration_service_pb2_grpc as reg_grpc
from agentcomm.generated import agent_status_service_pb2 as status_pb
from agentcomm.generated import agent_status_service_pb2_grpc as status_grpc
from tests.abuse.harness import WAIT, Records, Target, hub_process, under_attack
from tests.abuse.rawws import RawSocket
from tests.support.frontend import Frontend, of_type

pytestmark = pytest.mark.timeout(240)

# About 10 KB of capabilities per agent, as in the report.
FAT_CAPABILITIES = {f"capability-{index}": "c" * 1000 for index in range(10)}
GRPC_DEFAULT_RECEIVE = 4 * 1024 * 1024
# The frontends' rate limit (RATE_LIMIT_PER_SECOND default): the attackers keep to it.
PACE = 1 / 20


async def register_agents(target: Target, count: int, *, unregister: bool = False) -> None:
    """`count` agents with fat capabilities, each its own session, registered 20 at a time."""
    async with grpc.aio.insecure_channel(target.grpc_target) as channel:
        stub = reg_grpc.AgentRegistrationServiceStub(channel)
        slots = asyncio.Semaphore(20)

        async def one(index: int) -> None:
            agent_id = f"fat-{index:04}"
            metadata = (("agentcomm-session", f"fat-session-{index}"),)
            async with slots:
                await stub.RegisterAgent(
                    reg_pb.AgentRegistrationRequest(
                        agent_id=agent_id, agent_name="fat", capabilities=FAT_CAPABILITIES
                    ),
                    metadata=metadata,
                    timeout=WAIT,
                )
                if unregister:
                    await stub.UnregisterAgent(
                        reg_pb.AgentUnregistrationRequest(agent_id=agent_id),
                        metadata=metadata,
                        timeout=WAIT,
                    )

        await asyncio.gather(*(one(index) for index in range(count)))


async def silent_frontend(target: Target) -> RawSocket:
    """A registered frontend that will not read another byte."""
    host, port = "127.0.0.1", target.server.http_port
    sock = await RawSocket.connect(host, port)
    await sock.register("silent")
    return sock


async def keep_sending(sock: RawSocket, frames: list[dict[str, object]]) -> int:
    """Sends the frames at the rate limit until done or the server ends the connection;
    returns how many were written."""
    sent = 0
    for data in frames:
        try:
            await sock.send_json(data)
        except (ConnectionError, OSError, TimeoutError):
            break  # ended, or no longer read
        sent += 1
        await asyncio.sleep(PACE)  # the attacker's own pace, within the rate limit
    return sent


async def ended_by_the_server(sock: RawSocket) -> int | None:
    """Reads what is left; the close code, or None when the server dropped the connection."""
    try:
        _, code = await sock.read_until_closed(WAIT)
    finally:
        sock.abort()
    return code


async def write_to(frontend: Frontend, agent_id: str) -> str:
    """Sends a TEXT to an agent that has just registered until one is delivered (the broker
    learns of the agent a moment after the hub); returns that TEXT's id."""
    for attempt in range(20):
        message_id = f"to-{agent_id}-{attempt}"
        await frontend.send_text("hello", receiver_id=agent_id, message_id=message_id)
        echo = await frontend.next(
            lambda f, m=message_id: (
                f.get("message_id") == m and f.get("routing_status") in ("delivered", "error")
            ),
            timeout=WAIT,
        )
        if echo["routing_status"] == "delivered":
            return message_id
        await asyncio.sleep(0.1)  # the broker's agent list is not observable from here
    raise AssertionError(f"no TEXT reached {agent_id}")


async def test_frontends_that_stop_reading_are_cut_off_by_bytes(
    bus: str, tmp_path: Path, records: Records
) -> None:
    """Row 1: ten frontends register, stop reading and send 60 KB TEXTs to echo, whose
    answers pile up for them."""
    with hub_process(bus, tmp_path) as target:
        async with under_attack(
            target, records, "1 non-reading frontends, 60 KB replies", bound_mb=120
        ) as notes:
            socks = [await silent_frontend(target) for _ in range(10)]
            big = "x" * 60_000
            frames: list[dict[str, object]] = [
                {"message_type": "TEXT", "receiver_id": "echo", "text_payload": big}
                for _ in range(60)
            ]
            sent = await asyncio.gather(*(keep_sending(sock, frames) for sock in socks))
            codes = await asyncio.gather(*(ended_by_the_server(sock) for sock in socks))
            notes.update(texts_sent=sum(sent), close_codes=sorted({str(c) for c in codes}))
        assert all(code in (4008, None) for code in codes), codes


async def test_a_non_reading_frontend_asking_for_a_huge_agent_list(
    bus: str, tmp_path: Path, records: Records
) -> None:
    """Row 1b: with 1,000 agents of 10 KB registered (a 10 MB list), a frontend that does not
    read sends REQUEST_AGENT_STATUS again and again."""
    with hub_process(bus, tmp_path) as target:
        await register_agents(target, 1000)
        async with under_attack(
            target, records, "1b agent list asked for, not read", bound_mb=80
        ) as notes:
            sock = await silent_frontend(target)
            asking: list[dict[str, object]] = [{"message_type": "REQUEST_AGENT_STATUS"}] * 100
            notes["requests_sent"] = await keep_sending(sock, asking)
            notes["close_code"] = str(await ended_by_the_server(sock))


async def test_a_broker_reads_a_list_larger_than_a_grpc_message(
    bus: str, tmp_path: Path, records: Records
) -> None:
    """Row 2: 450 agents with 10 KB capabilities register and unregister (a 4.4 MiB list of
    offline agents); a broker that subscribes then, with gRPC's default receive limit, reads
    it whole, and TEXTs to echo are still answered (the bystander's)."""
    with hub_process(bus, tmp_path) as target:
        async with under_attack(
            target, records, "2 4.4 MiB agent list, new broker", bound_mb=80
        ) as notes:
            await register_agents(target, 450, unregister=True)
            async with grpc.aio.insecure_channel(target.grpc_target) as channel:
                call = status_grpc.AgentStatusServiceStub(channel).SubscribeToAgentStatus(
                    status_pb.AgentStatusRequest(broker_id="broker_late")
                )
                pages: list[status_pb.AgentStatusResponse] = []
                async with asyncio.timeout(WAIT):
                    while not pages or pages[-1].more_pages:
                        pages.append(await call.read())
                call.cancel()
            agents = {info.agent_id: info for page in pages for info in page.agents}
            notes.update(pages=len(pages), largest_page=max(page.ByteSize() for page in pages))
        assert sum(1 for agent_id in agents if agent_id.startswith("fat-")) == 450
        assert agents["echo"].is_online
        assert max(page.ByteSize() for page in pages) < GRPC_DEFAULT_RECEIVE


async def test_chunks_that_never_fill_their_gap_are_not_held(
    bus: str, tmp_path: Path, records: Records
) -> None:
    """Row 4: an agent sends REPLY_CHUNKs seq 1..999 (never 0) of 60 KB each to a frontend that
    wrote to it: the stream is given up with ERROR stream_incomplete, its chunks dropped."""
    with hub_process(bus, tmp_path) as target:
        async with (
            await Frontend.registered(
                target.ws_url, "victim", capabilities={"stream": True}
            ) as victim,
            grpc.aio.insecure_channel(target.grpc_target) as channel,
        ):
            stub = reg_grpc.AgentRegistrationServiceStub(channel)
            metadata = (("agentcomm-session", "evil-session"),)
            await stub.RegisterAgent(
                reg_pb.AgentRegistrationRequest(agent_id="evil", agent_name="evil"),
                metadata=metadata,
                timeout=WAIT,
            )
            asked = await write_to(victim, "evil")
            async with under_attack(
                target, records, "4 chunks behind a gap, 60 KB", bound_mb=120
            ) as notes:
                slots = asyncio.Semaphore(16)
                delta = "d" * 60_000

                async def chunk(seq: int) -> None:
                    envelope = (
                        '{"message_type": "REPLY_CHUNK", "message_id": "r-evil", '
                        f'"receiver_id": "{victim.frontend_id}", '
                        f'"in_reply_to_message_id": "{asked}", "seq": {seq}, '
                        f'"text_delta": "{delta}"}}'
                    )
                    async with slots:
                        await stub.SendMessage(
                            reg_pb.ChatMessage(agent_id="evil", envelope_json=envelope),
                            metadata=metadata,
                            timeout=WAIT,
                        )

                await asyncio.gather(*(chunk(seq) for seq in range(1, 1000)))
                error = await victim.next(
                    of_type("ERROR", in_reply_to_message_id=asked), timeout=WAIT
                )
                notes["answer"] = error["error_code"]
            assert error["error_code"] == "stream_incomplete"
            assert [f for f in victim.take_buffered() if f["message_type"] == "REPLY_CHUNK"] == []
