"""`agentcomm serve` as a process: refuses bad settings with one line, and shuts down
gracefully on SIGTERM (sockets closed with 1001, exit 0 within the shutdown timeout)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from tests.conftest import free_port
from tests.support.agent import GrpcAgent
from tests.support.frontend import Frontend

AGENTCOMM = str(Path(sys.executable).parent / "agentcomm")
SHUTDOWN_TIMEOUT = 5.0
SETTING_NAMES = (
    "PORT",
    "HOST",
    "GRPC_PORT",
    "GRPC_HOST",
    "MESSAGE_BUS",
    "AGENT_TIMEOUT",
    "LOG_FORMAT",
    "LOG_LEVEL",
    "MAX_MESSAGE_BYTES",
    "SHUTDOWN_TIMEOUT",
)


def clean_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key.upper() not in SETTING_NAMES}
    env.update(extra)
    return env


# -- bad settings ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PORT", "abc"),
        ("MESSAGE_BUS", "kafka"),
        ("GRPC_PORT", "99999"),
        ("AGENT_TIMEOUT", "-1"),
        ("LOG_FORMAT", "xml"),
    ],
)
def test_bad_setting_stops_serve_with_one_line(variable: str, value: str) -> None:
    done = subprocess.run(
        [AGENTCOMM, "serve"],
        env=clean_env(**{"MESSAGE_BUS": "memory", variable: value}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert variable in lines[0]
    assert repr(value) in lines[0]
    assert done.stdout == ""


def test_bad_flag_value_is_named_like_the_variable() -> None:
    done = subprocess.run(
        [AGENTCOMM, "serve", "--message-bus", "memory", "--port", "abc"],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "PORT" in lines[0]


# -- graceful shutdown ---------------------------------------------------------------------------


class ServerProcess:
    def __init__(self, process: asyncio.subprocess.Process, http_port: int, grpc_port: int):
        self.process = process
        self.ws_url = f"ws://127.0.0.1:{http_port}/ws"
        self.grpc_target = f"127.0.0.1:{grpc_port}"
        self.output: list[str] = []


@contextlib.asynccontextmanager
async def serve_process() -> AsyncIterator[ServerProcess]:
    http_port, grpc_port = free_port(), free_port()
    process = await asyncio.create_subprocess_exec(
        AGENTCOMM,
        "serve",
        "--message-bus",
        "memory",
        "--host",
        "127.0.0.1",
        "--port",
        str(http_port),
        "--grpc-host",
        "127.0.0.1",
        "--grpc-port",
        str(grpc_port),
        "--shutdown-timeout",
        str(SHUTDOWN_TIMEOUT),
        env=clean_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    server = ServerProcess(process, http_port, grpc_port)
    try:
        assert process.stdout is not None
        async with asyncio.timeout(30):
            while True:
                line = (await process.stdout.readline()).decode()
                if not line:
                    raise AssertionError("serve exited early:\n" + "".join(server.output))
                server.output.append(line)
                if line.startswith("agentcomm serving"):
                    break
        yield server
    finally:
        if process.returncode is None:
            process.kill()
            async with asyncio.timeout(10):
                await process.wait()


async def test_sigterm_closes_sockets_with_1001_and_exits_0() -> None:
    async with serve_process() as server:
        frontend = await Frontend.registered(server.ws_url, "Leaving")
        agent = GrpcAgent(server.grpc_target, "agent-stays", session="s")
        try:
            await agent.register("Stays")
            commands = agent.open_commands()
            # The agent's presence reached the frontend: everything is connected and live.
            await frontend.next(lambda frame: frame.get("is_full_update") is False)

            started = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            assert await frontend.wait_closed(timeout=SHUTDOWN_TIMEOUT) == 1001
            async with asyncio.timeout(SHUTDOWN_TIMEOUT + 2):
                returncode = await server.process.wait()
            elapsed = time.monotonic() - started
            assert returncode == 0, "".join(server.output)
            assert elapsed < SHUTDOWN_TIMEOUT + 1, elapsed
            # The agent's command stream ended with the server instead of hanging.
            error = await commands.wait_ended(timeout=5)
            assert error is None or error.code() in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.CANCELLED,
            )
        finally:
            await frontend.close()
            await agent.close()


async def test_sigterm_without_clients_exits_0() -> None:
    async with serve_process() as server:
        server.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(SHUTDOWN_TIMEOUT + 2):
            assert await server.process.wait() == 0


async def test_new_sockets_are_refused_while_draining() -> None:
    """Between SIGTERM and exit nobody new gets in: 1012 (come back later), or refused."""
    async with serve_process() as server:
        first = await Frontend.registered(server.ws_url, "First")
        try:
            server.process.send_signal(signal.SIGTERM)
            assert await first.wait_closed(timeout=SHUTDOWN_TIMEOUT) == 1001
            try:
                late = await Frontend.connect(server.ws_url, timeout=2)
            except OSError:
                pass  # already stopped listening: refused is fine too
            else:
                async with late:
                    assert await late.wait_closed(timeout=SHUTDOWN_TIMEOUT) == 1012
                    assert late.take_buffered() == []
            async with asyncio.timeout(SHUTDOWN_TIMEOUT + 2):
                assert await server.process.wait() == 0
        finally:
            await first.close()
