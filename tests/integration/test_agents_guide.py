"""The complete example of docs/agents.md, run exactly as written against a real hub.

The guide has one ```python block (other snippets use ```py fences); this test takes it from
the file, saves it as greeter.py and runs it as its own process, the way a reader would.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentcomm.server.testing import test_settings
from tests.integration.test_sdk_agents import WAIT, chat, stack, within
from tests.support.frontend import Frontend
from tests.support.waiting import wait_until

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "agents.md"


def guide_example() -> str:
    blocks = re.findall(r"^```python\n(.*?)^```$", GUIDE.read_text(), re.MULTILINE | re.DOTALL)
    assert len(blocks) == 1, "docs/agents.md must have exactly one ```python block"
    code: str = blocks[0]
    return code


def test_the_example_is_about_ten_lines() -> None:
    lines = [line for line in guide_example().splitlines() if line.strip()]
    assert len(lines) <= 12, lines


@pytest.mark.parametrize(
    "bus_kind", ["memory", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)]
)
async def test_the_guide_example_runs_as_written(
    bus_kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    overrides = request.getfixturevalue("rabbitmq_env") if bus_kind == "rabbitmq" else {}
    script = tmp_path / "greeter.py"
    script.write_text(guide_example())
    async with stack(test_settings(**overrides)) as running:
        env = {
            **os.environ,
            **{key.upper(): value for key, value in overrides.items()},
            "MESSAGE_BUS": bus_kind,
            "GRPC_HOST": "127.0.0.1",
            "GRPC_PORT": str(running.hub.server.grpc_port),
            "LOG_LEVEL": "WARNING",
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            cwd=tmp_path,
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            await running.broker_sees("greeter")
            await wait_until(
                lambda: running.hub.hub.commands.has_stream("greeter"),
                timeout=WAIT,
                what="the greeter's command stream",
            )
            async with await Frontend.registered(running.hub.ws_url) as alice:
                reply = await chat(alice, "hi there", "m-1")
            async with httpx.AsyncClient(base_url=running.hub.http_url, timeout=WAIT) as http:

                async def command(body: dict[str, Any]) -> dict[str, Any]:
                    response = await http.post("/api/agents/greeter/commands", json=body)
                    assert response.status_code == 200, response.text
                    result: dict[str, Any] = response.json()
                    return result

                shout = await command({"type": "shout", "content": "hi"})
                status = await command({"type": "status"})
                agents = (await http.get("/api/agents")).json()
            process.send_signal(signal.SIGTERM)
            assert await within(process.wait()) == 0
        finally:
            if process.returncode is None:
                process.kill()
                await within(process.wait())
        assert process.stderr is not None
        errors = (await within(process.stderr.read())).decode()
    assert reply["message_type"] == "REPLY", reply
    assert reply["text_payload"] == "Hello! You said: hi there"
    assert reply["sender_id"] == "greeter"
    assert shout["output"] == "HI"
    summary = json.loads(status["output"])
    assert summary["transport"] == ("amqp" if bus_kind == "rabbitmq" else "grpc")
    greeter = next(agent for agent in agents if agent["agent_id"] == "greeter")
    assert greeter["capabilities"] == {"lang": "en"}
    assert "Traceback" not in errors, errors
