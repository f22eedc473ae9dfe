"""`agentcomm dev --hubs 3` as a newcomer runs it: one command, one URL printed, and behind it
three hubs on RabbitMQ that are one system — a frontend on any of them talks to the demo agents,
which are registered on the others. On the in-process bus `--hubs` is refused in one sentence.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.e2e.processes import Process, Processes, fresh_vhost, rabbitmq_env
from tests.support.frontend import Frontend

pytestmark = [pytest.mark.timeout(180)]

WAIT = 30.0
URL_LINE = re.compile(r"agentcomm is running — open (http://\S+)")


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    processes = Processes(tmp_path, {"LOG_LEVEL": "INFO"})
    try:
        yield processes
    finally:
        problems = processes.close()
        assert not problems, "\n\n".join(problems)


def printed_url(process: Process) -> str:
    start = process.wait_for_output("agentcomm is running — open ", timeout=60)
    found = URL_LINE.search(process.output(), start)
    assert found is not None, process.tail()
    return found.group(1)


@pytest.mark.rabbitmq
async def test_three_hubs_behind_one_url_answer_a_frontend_on_each(
    rabbitmq_available: None, processes: Processes
) -> None:
    with fresh_vhost() as vhost:
        processes.env |= rabbitmq_env(vhost)
        port = free_port()
        dev = processes.agentcomm(
            "dev-hubs", "dev", "--hubs", "3", "--host", "127.0.0.1", "--port", str(port)
        )
        url = await asyncio.to_thread(printed_url, dev)
        assert url == f"http://127.0.0.1:{port}/"
        ws_url = url.replace("http://", "ws://") + "ws"
        async with httpx.AsyncClient(base_url=url, timeout=WAIT) as client:
            # Each request is a new connection: the balancer hands them round the hubs.
            listed = (await client.get("/api/hubs")).json()
            assert len(listed) == 3, listed
            served_by = set()
            for _ in range(3):
                async with httpx.AsyncClient(base_url=url, timeout=WAIT) as fresh:
                    listed = (await fresh.get("/api/hubs")).json()
                    served_by.add(next(hub["server_id"] for hub in listed if hub["this_hub"]))
            assert len(served_by) == 3, served_by
        # Three frontends, three connections: one on each hub.
        for number in range(3):
            async with await Frontend.registered(ws_url) as frontend:
                for agent in ("echo", "typist"):
                    sent = await frontend.send_text(
                        f"hello {number}", receiver_id=agent, message_id=f"m-{number}-{agent}"
                    )
                    reply = await frontend.next(
                        lambda f, sent=sent: (
                            f.get("in_reply_to_message_id") == sent["message_id"]
                            and f.get("message_type") in ("REPLY", "ERROR")
                        ),
                        timeout=WAIT,
                    )
                    assert reply["message_type"] == "REPLY", reply
                    assert f"hello {number}" in reply["text_payload"]


async def test_hubs_on_the_in_process_bus_are_refused_in_one_sentence(
    processes: Processes,
) -> None:
    dev = processes.agentcomm("dev-refused", "dev", "--hubs", "3", "--port", "0")
    code = await asyncio.to_thread(dev.popen.wait, 30)  # type: ignore[union-attr]
    dev.ended_on_purpose = True
    assert code == 2
    assert "--hubs needs RabbitMQ" in dev.output()
