"""What every attack of the abuse suite shares: a hub to attack in a process of its own, its
memory, a bystander whose latency shows what the attack costs everyone else, and the record
of the numbers.

The hub is `agentcomm dev` (server, reference broker and the demo agents in one process, on
the in-process bus or on RabbitMQ in a fresh vhost), so its resident memory is read from
/proc, as an operator would see it. The bystander is an ordinary frontend that talks to the
`echo` agent at a steady pace, before and during each attack.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import free_port
from tests.e2e.processes import (
    START_TIMEOUT,
    Processes,
    Server,
    fresh_vhost,
    listen_flags,
    poll,
    rabbitmq_env,
)
from tests.support.frontend import Frontend, of_type

SECRET = "an-abuse-suite-secret-that-is-long-enough"
# Generous bounds: the machine is small and other suites may run beside this one.
TURN_TIMEOUT = 10.0
WAIT = 15.0
BYSTANDER_PACE = 0.1
# Tracebacks the libraries log when a link is cut under them (aiormq), expected on RabbitMQ.
KNOWN_TRACEBACKS = ("aiormq.exceptions.",)


@dataclass
class Target:
    """The hub under attack."""

    server: Server
    bus: str
    secret: str | None

    @property
    def pid(self) -> int:
        popen = self.server.process.popen
        assert popen is not None
        return popen.pid

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS for the hub")

    @property
    def ws_url(self) -> str:
        return self.server.ws_url

    @property
    def http_url(self) -> str:
        return self.server.url

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.server.grpc_port}"

    def check_running(self) -> None:
        self.server.process.check_running()


@contextmanager
def _bus_environment(bus: str) -> Iterator[tuple[dict[str, str], list[str]]]:
    if bus == "memory":
        yield {}, ["--message-bus", "memory"]
        return
    with fresh_vhost() as vhost:
        yield rabbitmq_env(vhost), ["--message-bus", "rabbitmq"]


@contextmanager
def hub_process(
    bus: str, log_dir: Path, *flags: str, secret: str | None = None
) -> Iterator[Target]:
    """`agentcomm dev` on free ports on `bus`, stopped (and checked for tracebacks) after."""
    with _bus_environment(bus) as (env, bus_flags):
        if secret is not None:
            env = env | {"AUTH_SECRET": secret}
        processes = Processes(log_dir, env, known_tracebacks=KNOWN_TRACEBACKS)
        try:
            server = _start_dev(processes, [*bus_flags, *flags])
            yield Target(server, bus, secret)
        finally:
            problems = processes.close()
        assert not problems, "\n".join(problems)


def _start_dev(processes: Processes, flags: list[str]) -> Server:
    """`agentcomm dev` on free ports, waited for until /readyz answers 200 (which, with
    AUTH_SECRET set, is all a test without an admin token can ask)."""
    http_port, grpc_port = free_port(), free_port()
    process = processes.agentcomm("hub", "dev", *listen_flags(http_port, grpc_port), *flags)
    server = Server(process, http_port, grpc_port)
    poll(server.is_ready, timeout=START_TIMEOUT, what="the hub ready", alive=[process])
    return server


class RssWatch:
    """The hub's resident memory, sampled every 20 ms while the block runs: its peak."""

    def __init__(self, target: Target) -> None:
        self._target = target
        self.peak = target.rss_mb()
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, self._target.rss_mb())
            await asyncio.sleep(0.02)

    async def __aenter__(self) -> RssWatch:
        self._task = asyncio.create_task(self._sample(), name="rss-watch")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self.peak = max(self.peak, self._target.rss_mb())


def p99(latencies: list[float]) -> float:
    if len(latencies) < 2:
        return latencies[0] if latencies else 0.0
    return statistics.quantiles(latencies, n=100, method="inclusive")[98]


class Bystander:
    """A well-behaved frontend: a TEXT to `echo` every BYSTANDER_PACE seconds, each timed from
    sending to its REPLY. Every turn must be answered, within TURN_TIMEOUT."""

    def __init__(self, frontend: Frontend) -> None:
        self.frontend = frontend
        self.latencies: list[float] = []
        self._turns = 0

    @classmethod
    async def join(cls, target: Target) -> Bystander:
        frontend = await Frontend.connect(target.ws_url)
        register: dict[str, Any] = {"message_type": "REGISTER_FRONTEND", "frontend_name": "calm"}
        if target.secret is not None:
            from agentcomm.core.auth import Authenticator, Role

            register["token"] = Authenticator(target.secret).mint(Role.FRONTEND, "calm", 3600)
        await frontend.send(register)
        await frontend.next(of_type("REGISTER_FRONTEND_RESPONSE"), timeout=WAIT)
        bystander = cls(frontend)
        await bystander.turn()  # the first turn warms every path up
        bystander.latencies.clear()
        return bystander

    async def turn(self) -> float:
        self._turns += 1
        message_id = f"calm-{self._turns}"
        started = time.monotonic()
        await self.frontend.send_text(
            f"turn {self._turns}", receiver_id="echo", message_id=message_id
        )
        await self.frontend.next(
            of_type("REPLY", in_reply_to_message_id=message_id), timeout=TURN_TIMEOUT
        )
        latency = time.monotonic() - started
        self.latencies.append(latency)
        self.frontend.take_buffered()  # echoes and presence: not what is measured
        return latency

    @asynccontextmanager
    async def talking(self) -> AsyncIterator[list[float]]:
        """Keeps taking turns while the block runs; yields the latencies of those turns."""
        start = len(self.latencies)
        stop = asyncio.Event()

        async def keep_talking() -> None:
            while not stop.is_set():
                await self.turn()
                try:
                    async with asyncio.timeout(BYSTANDER_PACE):
                        await stop.wait()
                except TimeoutError:
                    pass

        task = asyncio.create_task(keep_talking(), name="bystander")
        during: list[float] = []
        try:
            yield during
        finally:
            stop.set()
            async with asyncio.timeout(TURN_TIMEOUT + WAIT):
                await task  # a turn that failed fails the test here
            during.extend(self.latencies[start:])

    async def idle_p99(self, turns: int = 15) -> float:
        latencies = [await self.turn() for _ in range(turns)]
        await asyncio.sleep(0)
        return p99(latencies)

    async def close(self) -> None:
        await self.frontend.close()


@dataclass
class AttackRecord:
    """The numbers of one attack on one bus, as docs/reliability.md shows them."""

    attack: str
    bus: str
    rss_before_mb: float
    rss_peak_mb: float
    rss_after_mb: float
    bound_mb: float
    p99_idle_ms: float
    p99_attack_ms: float
    turns: int
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass
class Records:
    """Every record of the session; written as JSON to $ABUSE_RESULTS when it is set."""

    items: list[AttackRecord] = field(default_factory=list)

    def add(self, record: AttackRecord) -> None:
        self.items.append(record)

    def table(self) -> str:
        lines = [
            "attack | bus | RSS before → peak → after (MB) | bound | bystander p99 idle → "
            "attack (ms) | turns"
        ]
        for r in self.items:
            lines.append(
                f"{r.attack} | {r.bus} | {r.rss_before_mb:.0f} → {r.rss_peak_mb:.0f} → "
                f"{r.rss_after_mb:.0f} | +{r.bound_mb:.0f} | {r.p99_idle_ms:.1f} → "
                f"{r.p99_attack_ms:.1f} | {r.turns}"
            )
        return "\n".join(lines)

    def write(self, environ: Mapping[str, str] = os.environ) -> None:
        path = environ.get("ABUSE_RESULTS")
        if not path or not self.items:
            return
        load = os.getloadavg()
        Path(path).write_text(
            json.dumps({"load_average": load, "records": [asdict(r) for r in self.items]}, indent=2)
        )


@asynccontextmanager
async def under_attack(
    target: Target, records: Records, attack: str, *, bound_mb: float
) -> AsyncIterator[dict[str, Any]]:
    """Runs the block (the attack) while a bystander talks and the hub's memory is watched;
    records the numbers, then checks that the hub kept within `bound_mb` of what it had
    before and that the bystander got every answer. Yields a dict for the attack's notes."""
    bystander = await Bystander.join(target)
    notes: dict[str, Any] = {}
    try:
        idle = await bystander.idle_p99()
        before = target.rss_mb()
        async with RssWatch(target) as watch, bystander.talking() as during:
            yield notes
        # A few quiet turns after: the hub is still itself.
        for _ in range(3):
            await bystander.turn()
        after = target.rss_mb()
    finally:
        await bystander.close()
    records.add(
        AttackRecord(
            attack=attack,
            bus=target.bus,
            rss_before_mb=round(before, 1),
            rss_peak_mb=round(watch.peak, 1),
            rss_after_mb=round(after, 1),
            bound_mb=bound_mb,
            p99_idle_ms=round(idle * 1000, 1),
            p99_attack_ms=round(p99(during) * 1000, 1),
            turns=len(during),
            notes=notes,
        )
    )
    target.check_running()
    assert watch.peak - before <= bound_mb, (
        f"{attack}: the hub grew from {before:.0f} to {watch.peak:.0f} MB "
        f"(bound +{bound_mb:.0f} MB)"
    )
    assert during, "the bystander took no turn during the attack"
