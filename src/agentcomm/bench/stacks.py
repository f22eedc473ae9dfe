"""The systems under test, each started as separate processes like in production.

- `RabbitHub`: `agentcomm serve`, `agentcomm broker` and `agentcomm agent echo --transport
  amqp`, three processes on RabbitMQ.
- `MemoryHub`: one process with the server and the broker on the in-process bus, and the echo
  agent in a second process over gRPC (or, with `echo_in_process`, in the hub process).
- `FloorChain`: the bare aio-pika relays of the floor in three processes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import orjson

from agentcomm.bench.floor import (
    RELAY_PLACEMENT,
    SERIAL_VARIABLE,
    URL_VARIABLE,
    FloorOrigin,
    floor_queues,
)
from agentcomm.bench.procs import (
    BenchError,
    Child,
    Children,
    cpu_seconds,
    free_port,
    settings_env,
    wait_http_ok,
)
from agentcomm.config import Settings

START_TIMEOUT = 60.0
ECHO_ID = "echo"


@dataclass
class CpuWindow:
    """CPU time each process used during a measurement, in seconds."""

    seconds: float
    used: dict[str, float] = field(default_factory=dict)

    def per_event_ms(self, events: int) -> dict[str, float]:
        if events <= 0:
            return {}
        return {name: used / events * 1000 for name, used in self.used.items()}

    def utilisation(self) -> dict[str, float]:
        if self.seconds <= 0:
            return {}
        return {name: used / self.seconds for name, used in self.used.items()}


@contextmanager
def cpu_window(processes: dict[str, int]) -> Iterator[CpuWindow]:
    """Measures the CPU that `processes` (name -> pid) use inside the block."""
    started = time.monotonic()
    before = {name: _cpu(pid) for name, pid in processes.items()}
    window = CpuWindow(seconds=0.0)
    try:
        yield window
    finally:
        window.seconds = time.monotonic() - started
        for name, pid in processes.items():
            after = _cpu(pid)
            if after is not None and before[name] is not None:
                window.used[name] = after - (before[name] or 0.0)


def _cpu(pid: int) -> float | None:
    try:
        return cpu_seconds(pid)
    except (OSError, IndexError, ValueError):
        return None


def _child_settings(settings: Settings, **overrides: object) -> dict[str, str]:
    values: dict[str, object] = {
        "host": "127.0.0.1",
        "grpc_host": "127.0.0.1",
        "log_level": "WARNING",
    }
    values.update(overrides)
    return settings_env(settings, **values)


async def _wait_agent_online(http_port: int, agent_id: str, watch: Child, timeout: float) -> None:
    try:
        async with asyncio.timeout(timeout):
            while True:
                body = await wait_http_ok(http_port, "/api/agents", timeout, watch)
                agents = orjson.loads(body)
                if any(a.get("agent_id") == agent_id and a.get("is_online") for a in agents):
                    return
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise BenchError(
            f"Agent {agent_id!r} did not come online within {timeout:.0f} s."
        ) from None


async def _start_agent(
    children: Children,
    env: dict[str, str],
    transport: str,
    module: str | None,
    agent_id: str,
    args: Sequence[str] = (),
    *,
    name: str = "agent",
) -> Child:
    """The echo agent (`agentcomm agent echo`), or the agent of `module`."""
    if module is None:
        return await children.start_agentcomm(
            name, ["agent", "echo", "--id", agent_id, "--transport", transport], env
        )
    return await children.start_module(
        name, module, ["--transport", transport, "--id", agent_id, *args], env
    )


class RabbitHub:
    """Server, broker and echo agent as three processes on RabbitMQ (or, with `agent_module`,
    that module's agent: `python -m MODULE --transport amqp --id AGENT_ID`)."""

    def __init__(
        self,
        settings: Settings,
        children: Children,
        *,
        prefix: str = "",
        env: Mapping[str, str] | None = None,
        agent_module: str | None = None,
        agent_id: str = ECHO_ID,
        agent_args: Sequence[str] = (),
    ) -> None:
        self.settings = settings
        self.children = children
        self.agent_module = agent_module
        self.agent_id = agent_id
        self.agent_args = agent_args
        self.http_port = free_port()
        self.grpc_port = free_port()
        self.processes: dict[str, int] = {}
        # Names the processes (and their logs) when two hubs run side by side; `env` is what
        # they get on top of the settings (the OTEL_* variables of a traced hub).
        self._prefix = prefix
        self._env = dict(env or {})

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.http_port}/ws"

    async def start(self) -> None:
        env = _child_settings(
            self.settings,
            message_bus="rabbitmq",
            port=self.http_port,
            grpc_port=self.grpc_port,
        )
        env.update(self._env)
        named = self._prefix
        server = await self.children.start_agentcomm(f"{named}server", ["serve"], env)
        await wait_http_ok(self.http_port, "/readyz", START_TIMEOUT, server)
        broker = await self.children.start_agentcomm(f"{named}broker", ["broker"], env)
        agent = await _start_agent(
            self.children,
            env,
            "amqp",
            self.agent_module,
            self.agent_id,
            self.agent_args,
            name=f"{named}agent",
        )
        await _wait_agent_online(self.http_port, self.agent_id, agent, START_TIMEOUT)
        self.children.check_alive()
        self.processes = {"server": server.pid, "broker": broker.pid, "agent": agent.pid}


class MemoryHub:
    """Server and broker on the in-process bus in one process; echo agent over gRPC."""

    def __init__(
        self,
        settings: Settings,
        children: Children,
        *,
        echo_in_process: bool = False,
        broker: bool = True,
        name: str = "hub",
        agent_module: str | None = None,
        agent_id: str = ECHO_ID,
        agent_args: Sequence[str] = (),
        **overrides: object,
    ) -> None:
        self.settings = settings
        self.agent_module = agent_module
        self.agent_id = agent_id
        self.agent_args = agent_args
        self.children = children
        self.echo_in_process = echo_in_process
        self.broker = broker
        self.name = name
        self.overrides = overrides
        self.http_port = 0
        self.grpc_port = 0
        self.pid = 0
        self.processes: dict[str, int] = {}

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.http_port}/ws"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    async def start(self, *, with_agent: bool = True) -> None:
        env = _child_settings(
            self.settings, message_bus="memory", port=0, grpc_port=0, **self.overrides
        )
        args = [] if self.broker else ["--no-broker"]
        if self.echo_in_process:
            args.append("--echo")
        hub = await self.children.start_module(self.name, "agentcomm.bench.hubproc", args, env)
        ports = await hub.wait_for_json("http_port", START_TIMEOUT)
        self.http_port = int(ports["http_port"])
        self.grpc_port = int(ports["grpc_port"])
        self.pid = hub.pid
        self.processes = {"hub": hub.pid}
        if self.echo_in_process:
            await _wait_agent_online(self.http_port, ECHO_ID, hub, START_TIMEOUT)
        elif with_agent:
            agent_env = dict(env)
            agent_env["GRPC_PORT"] = str(self.grpc_port)
            agent = await _start_agent(
                self.children,
                agent_env,
                "grpc",
                self.agent_module,
                self.agent_id,
                self.agent_args,
            )
            await _wait_agent_online(self.http_port, self.agent_id, agent, START_TIMEOUT)
            self.processes["agent"] = agent.pid


class FloorChain:
    """The floor's relays (three processes) and its origin (a load-generation target)."""

    def __init__(
        self,
        settings: Settings,
        children: Children,
        body_size: int,
        run_id: str,
        *,
        serial: bool = False,
    ) -> None:
        self.settings = settings
        self.children = children
        self.serial = serial
        self.prefix = "floor-serial" if serial else "floor"
        self.queues = floor_queues(run_id)
        self.prefetch = settings.rabbitmq_prefetch
        self.origin = FloorOrigin(settings.rabbitmq_url, self.queues, body_size, self.prefetch)
        self.processes: dict[str, int] = {}

    async def start(self) -> None:
        await self.origin.declare()
        env = _child_settings(self.settings)
        env[URL_VARIABLE] = self.settings.rabbitmq_url
        env[SERIAL_VARIABLE] = "1" if self.serial else "0"
        relays: list[Child] = []
        for role, hops in RELAY_PLACEMENT.items():
            name = role.replace("floor", self.prefix, 1)
            pairs = [f"{self.queues[a - 1]}>{self.queues[b - 1]}" for a, b in hops]
            relays.append(
                await self.children.start_module(
                    name, "agentcomm.bench.floor", [str(self.prefetch), *pairs], env
                )
            )
        for relay in relays:
            await relay.wait_for_json("ready", START_TIMEOUT)
            self.processes[relay.name] = relay.pid
        await self.origin.start()

    async def close(self) -> None:
        await self.origin.close()
