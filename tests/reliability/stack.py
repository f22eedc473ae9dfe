"""The processes of a reliability scenario: one `agentcomm serve` on RabbitMQ, brokers and echo
agents, each its own process, optionally reaching RabbitMQ or the server's gRPC port through a
TcpProxy; and RabbitMQ itself stopped and started again.

Synchronous like tests/e2e/processes.py, whose helpers it uses; async tests call the blocking
parts through `asyncio.to_thread`.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.e2e.processes import (
    Process,
    Processes,
    Server,
    fresh_vhost,
    rabbitmq_env,
    start_broker,
    start_server,
)

CRASHY_AGENT = Path(__file__).with_name("agents") / "crashy.py"
RABBITMQ_HOST = "127.0.0.1"
RABBITMQ_PORT = 5672
# How long RabbitMQ may take to come back after start_app before the test gives up.
RABBITMQ_START_TIMEOUT = 60.0

# Tracebacks that a lost connection makes the libraries log (aiormq logs RabbitMQ's forced close
# with one), and a message an agent gave back (logged by the bus as a failed handler, then
# redelivered): expected here, where links are cut on purpose.
EXPECTED_TRACEBACKS = (
    "aiormq.exceptions.",
    "agentcomm.server.grpc.inboxes.InboxClosed",
    "agentcomm.bus.base.BusUnavailable",
)

# Short deadlines so that the scenarios notice dead links and offline agents within seconds.
SERVER_FLAGS = {
    "--agent-timeout": "4",
    "--stream-grace": "1",
    "--heartbeat-interval": "1",
    "--rate-limit-per-second": "1000",
    "--rate-limit-burst": "1000",
}


@dataclass
class Stack:
    processes: Processes
    server: Server
    vhost: str
    brokers: dict[str, Process] = field(default_factory=dict)
    agents: dict[str, Process] = field(default_factory=dict)

    @property
    def ws_url(self) -> str:
        return self.server.ws_url

    def add_broker(self, broker_id: str, flags: Mapping[str, str] | None = None) -> Process:
        process = start_broker(self.processes, self.server, broker_id, *_env_flags(flags or {}))
        self.brokers[broker_id] = process
        return process

    def add_echo(
        self,
        agent_id: str,
        transport: str,
        *,
        env: Mapping[str, str] | None = None,
        wait: bool = True,
    ) -> Process:
        """`agentcomm agent echo` as `agent_id`, its work over `transport` (amqp or grpc)."""
        process = self.processes.agentcomm(
            agent_id,
            "agent",
            "echo",
            "--name",
            agent_id,
            "--id",
            agent_id,
            "--transport",
            transport,
            env=self.server.grpc_env | dict(env or {}),
        )
        self.agents[agent_id] = process
        if wait:
            self.server.wait_agents([agent_id], alive=[process])
        return process

    def add_crashy(self, agent_id: str, transport: str, *, wait: bool = True) -> Process:
        """tests/reliability/agents/crashy.py as `agent_id`: echo, "slow <s>", "poison"."""
        process = self.processes.python(
            agent_id, CRASHY_AGENT, agent_id, transport, env=self.server.grpc_env
        )
        self.agents[agent_id] = process
        if wait:
            self.server.wait_agents([agent_id], alive=[process])
        return process

    def wait_ready(self, timeout: float = 30.0) -> None:
        from tests.e2e.processes import poll

        poll(self.server.is_ready, timeout=timeout, what="server ready", alive=self.all())

    def all(self) -> list[Process]:
        return [self.server.process, *self.brokers.values(), *self.agents.values()]

    def check_running(self) -> None:
        for process in self.all():
            process.check_running()

    def tails(self) -> str:
        return self.processes.tails()


def _env_flags(env: Mapping[str, str]) -> list[str]:
    return [item for key, value in env.items() for item in (key, value)]


@contextmanager
def reliability_stack(
    log_dir: Path,
    *,
    server_flags: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
    fast_path: bool = True,
) -> Iterator[Stack]:
    """A server on RabbitMQ in a fresh vhost; the test adds brokers and agents. Every process
    is ended on the way out, and one that exited by itself or logged an unexpected traceback
    fails the test. `fast_path` False runs every process's bus on plain aio-pika."""
    with fresh_vhost() as vhost:
        processes = Processes(
            log_dir,
            rabbitmq_env(vhost)
            | {"LOG_LEVEL": "INFO", "RABBITMQ_FAST_PATH": "1" if fast_path else "0"}
            | dict(env or {}),
        )
        problems: list[str] = []
        try:
            flags = SERVER_FLAGS | dict(server_flags or {})
            server = start_server(processes, "server", "serve", *_env_flags(flags))
            yield Stack(processes, server, vhost)
        finally:
            problems = processes.close()
    assert not problems, "\n\n".join(problems)


def report_line(scenario: str, counts: Mapping[str, object]) -> str:
    """One line the docs quote: the scenario and its counts."""
    line = f"RELIABILITY {scenario} {json.dumps(dict(counts), sort_keys=True)}"
    print(line, flush=True)
    return line


# -- RabbitMQ itself ---------------------------------------------------------------------------


def rabbitmqctl(*args: str, timeout: float = 60.0) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=timeout)


def rabbitmq_running() -> bool:
    result = subprocess.run(
        ["rabbitmq-diagnostics", "-q", "check_running"], capture_output=True, timeout=30
    )
    if result.returncode != 0:
        return False
    try:
        with socket.create_connection((RABBITMQ_HOST, RABBITMQ_PORT), timeout=2):
            return True
    except OSError:
        return False


def start_rabbitmq() -> float:
    """`start_app`, then waits until the node runs and takes connections; returns seconds."""
    began = time.monotonic()
    rabbitmqctl("start_app", timeout=RABBITMQ_START_TIMEOUT)
    deadline = began + RABBITMQ_START_TIMEOUT
    while not rabbitmq_running():
        if time.monotonic() > deadline:
            raise AssertionError(f"RabbitMQ did not come back within {RABBITMQ_START_TIMEOUT} s")
        time.sleep(0.1)
    return time.monotonic() - began


@contextmanager
def rabbitmq_stopped() -> Iterator[None]:
    """RabbitMQ's app stopped for the body of the `with` (keep it short: other tests may share
    this node); started again and waited for however the body ends."""
    try:
        rabbitmqctl("stop_app")
        yield
    finally:
        start_rabbitmq()


def restart_rabbitmq(down_for: float = 0.0) -> float:
    """Stops RabbitMQ, keeps it down `down_for` seconds, starts it; returns the outage length."""
    began = time.monotonic()
    with rabbitmq_stopped():
        if down_for:
            time.sleep(down_for)
    return time.monotonic() - began
