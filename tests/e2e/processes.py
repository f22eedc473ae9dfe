"""Separate `agentcomm` processes for the end-to-end tests: start on free ports, wait until they
are ready, keep their output in a log file, and always end them.

Every wait has a deadline and fails early (with the process's output) when the process exits
instead. Readiness is what the hub itself reports: `GET /readyz` for a server, the agent list of
`GET /api/agents` for agents, the broker's "routing from broker_input_queue" line for a broker.

The code here is synchronous on purpose: module-scoped fixtures use it directly, and async
tests call the waits through `asyncio.to_thread`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from agentcomm.config import Settings
from tests.conftest import _rabbitmqctl, free_port

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
POLL_SECONDS = 0.05
LOG_TAIL_CHARS = 6000

WORKER_SCRIPT = Path(__file__).with_name("agents") / "worker.py"
BROKER_READY_LINE = "routing from broker_input_queue"
# Signs that a listen port was taken between free_port() and the child's bind.
_PORT_TAKEN = ("is in use (another agentcomm?)", "address already in use", "failed to bind")

# On Linux the children get SIGKILL when the test process dies, however it dies.
_PDEATHSIG = ["setpriv", "--pdeathsig", "KILL", "--"] if shutil.which("setpriv") else []


def agentcomm_command() -> list[str]:
    """The installed `agentcomm` command of this interpreter's environment."""
    script = Path(sys.executable).with_name("agentcomm")
    return [str(script)] if script.exists() else [sys.executable, "-m", "agentcomm"]


def clean_environment() -> dict[str, str]:
    """This process's environment without any agentcomm setting, so that only what a test
    passes reaches the children."""
    settings = {name.upper() for name in Settings.model_fields}
    env = {key: value for key, value in os.environ.items() if key.upper() not in settings}
    env["PYTHONUNBUFFERED"] = "1"
    # A hub's default history database goes here, never into the checkout (Processes gives
    # each test a directory of its own).
    env["DATA_DIR"] = str(Path(tempfile.gettempdir()) / "agentcomm-test-data")
    return env


@dataclass
class Process:
    """One child process with its stdout and stderr in `log_path`."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    # Set once the test ended it (a signal, stop, kill): its exit is then no surprise.
    ended_on_purpose: bool = False
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self) -> Process:
        assert not self.running, f"{self.name} is already running"
        self._close_log()
        self.ended_on_purpose = False
        self._log = self.log_path.open("ab")
        self._log.write(f"\n===== {self.name}: {' '.join(self.argv)}\n".encode())
        self._log.flush()
        self.popen = subprocess.Popen(
            [*_PDEATHSIG, *self.argv],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            # A Ctrl+C meant for pytest is not also delivered here.
            start_new_session=True,
        )
        return self

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        return f"--- {self.name} ({self.log_path}) ---\n{self.output()[-chars:]}"

    def check_running(self) -> None:
        if not self.running:
            raise AssertionError(f"{self.name} exited with {self.returncode}:\n{self.tail()}")

    def wait_for_output(
        self, needle: str, *, after: int = 0, timeout: float = START_TIMEOUT
    ) -> int:
        """Waits until `needle` is in the output past offset `after`; returns where it starts."""
        deadline = time.monotonic() + timeout
        while True:
            position = self.output().find(needle, after)
            if position >= 0:
                return position
            self.check_running()
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.name} did not print {needle!r} within {timeout} s:\n{self.tail()}"
                )
            time.sleep(POLL_SECONDS)

    def send_signal(self, signum: int) -> None:
        """Sends `signum` to this process only (by its pid)."""
        if self.running:
            assert self.popen is not None
            self.ended_on_purpose = True
            self.popen.send_signal(signum)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Sends `signum` and waits for the exit; returns the exit code. A process that does not
        exit in time is killed, and that is a failure."""
        assert self.popen is not None, f"{self.name} was never started"
        self.send_signal(signum)
        try:
            code = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"{self.name} did not exit within {timeout} s of "
                f"{signal.Signals(signum).name}:\n{self.tail()}"
            ) from None
        finally:
            self._close_log()
        return code

    def kill(self) -> None:
        """SIGKILL (when still running) and reap."""
        if self.popen is not None:
            if self.popen.poll() is None:
                self.ended_on_purpose = True
                self.popen.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=STOP_TIMEOUT)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class Processes:
    """Every process a fixture or a test started. `close()` stops those still running (SIGTERM,
    newest first, then SIGKILL for any that hang) and reports the ones that did not exit
    cleanly; it is meant for a `finally`."""

    def __init__(
        self, log_dir: Path, env: Mapping[str, str], *, known_tracebacks: Iterable[str] = ()
    ) -> None:
        self.log_dir = log_dir
        self.env = dict(env)
        self.started: list[Process] = []
        # Exception names whose tracebacks `close()` lets pass: known bugs, reported elsewhere.
        self.known_tracebacks = tuple(known_tracebacks)

    def spawn(self, name: str, argv: list[str], env: Mapping[str, str] | None = None) -> Process:
        process = Process(
            name=name,
            argv=argv,
            # The default history database of a hub it starts, in the test's own directory.
            env=clean_environment()
            | {"DATA_DIR": str(self.log_dir / "data")}
            | self.env
            | dict(env or {}),
            log_path=self.log_dir / f"{name}.log",
        )
        self.started.append(process)
        return process.start()

    def agentcomm(self, name: str, *args: str, env: Mapping[str, str] | None = None) -> Process:
        return self.spawn(name, [*agentcomm_command(), *args], env)

    def python(
        self, name: str, script: Path, *args: str, env: Mapping[str, str] | None = None
    ) -> Process:
        return self.spawn(name, [sys.executable, str(script), *args], env)

    def tails(self) -> str:
        return "\n".join(process.tail() for process in self.started)

    def close(self) -> list[str]:
        """Ends every process; returns what went wrong (a hang, a traceback, an exit code)."""
        problems: list[str] = []
        for process in reversed(self.started):
            if not process.running:
                if not process.ended_on_purpose:
                    problems.append(
                        f"{process.name} had exited by itself ({process.returncode}):\n"
                        f"{process.tail()}"
                    )
                process.kill()  # reaps, closes the log
                continue
            try:
                code = process.stop(signal.SIGTERM)
            except AssertionError as exc:
                problems.append(str(exc))
                continue
            if code != 0:
                problems.append(f"{process.name} exited with {code} on SIGTERM:\n{process.tail()}")
        for process in self.started:
            unexpected = [
                exception
                for exception in tracebacks(process.output())
                if not exception.startswith(self.known_tracebacks)
            ]
            if unexpected:
                problems.append(
                    f"{process.name} logged tracebacks of {unexpected}:\n{process.tail()}"
                )
        return problems


def tracebacks(output: str) -> list[str]:
    """The exception line ("module.Error: text") of every traceback in `output`."""
    exceptions: list[str] = []
    lines = output.splitlines()
    for index, line in enumerate(lines):
        if not line.startswith("Traceback (most recent call last):"):
            continue
        # The exception line is the first one after the indented frames.
        ending = next((later for later in lines[index + 1 :] if not later.startswith(" ")), "?")
        exceptions.append(ending)
    return exceptions


# -- HTTP ------------------------------------------------------------------------------------


def get_json(url: str) -> tuple[int, Any]:
    response = httpx.get(url, timeout=2.0)
    try:
        body = response.json()
    except ValueError:
        body = None
    return response.status_code, body


def post_json(url: str, body: Mapping[str, Any], timeout: float = 10.0) -> tuple[int, Any]:
    response = httpx.post(url, json=dict(body), timeout=timeout)
    return response.status_code, response.json()


def poll(
    condition: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    alive: Iterable[Process] = (),
    details: Callable[[], str] = lambda: "",
) -> None:
    """Polls `condition` until it holds; fails at the deadline, or at once when one of the
    `alive` processes exits meanwhile."""
    watched = list(alive)
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except httpx.HTTPError:
            pass  # not listening yet, or restarting
        for process in watched:
            process.check_running()
        if time.monotonic() > deadline:
            raise AssertionError(f"Timed out after {timeout} s waiting for {what}. {details()}")
        time.sleep(POLL_SECONDS)


# -- the parts of a stack ---------------------------------------------------------------------


@dataclass
class Server:
    """A running `agentcomm serve` or `agentcomm dev`."""

    process: Process
    http_port: int
    grpc_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.http_port}/ws"

    @property
    def grpc_env(self) -> dict[str, str]:
        """What a broker or agent process needs to find this server."""
        return {"GRPC_HOST": "127.0.0.1", "GRPC_PORT": str(self.grpc_port)}

    def is_ready(self) -> bool:
        status, _ = get_json(f"{self.url}/readyz")
        return status == 200

    def agents(self) -> dict[str, dict[str, Any]]:
        status, body = get_json(f"{self.url}/api/agents")
        assert status == 200, (status, body)
        return {info["agent_id"]: info for info in body}

    def wait_agents(
        self,
        agent_ids: Iterable[str],
        *,
        online: bool = True,
        timeout: float = START_TIMEOUT,
        alive: Iterable[Process] = (),
    ) -> None:
        """Waits until every agent of `agent_ids` is listed online (or, with online=False,
        offline or not listed)."""
        wanted = set(agent_ids)
        seen: dict[str, dict[str, Any]] = {}

        def holds() -> bool:
            seen.clear()
            seen.update(self.agents())
            if online:
                return all(seen.get(a, {}).get("is_online") is True for a in wanted)
            return all(seen.get(a, {}).get("is_online") is not True for a in wanted)

        poll(
            holds,
            timeout=timeout,
            what=f"agents {sorted(wanted)} {'online' if online else 'offline'}",
            alive=[self.process, *alive],
            details=lambda: f"Agents: {json.dumps(seen)}",
        )

    def wait_idle(self, agent_ids: Iterable[str], *, timeout: float = 10.0) -> None:
        """Waits until every agent of `agent_ids` reports itself online and working on
        nothing (status "online", in_flight 0), as the brokers will then see it too."""
        wanted = set(agent_ids)
        seen: dict[str, dict[str, Any]] = {}

        def holds() -> bool:
            seen.clear()
            seen.update(self.agents())
            return all(
                seen.get(a, {}).get("status") == "online" and not seen[a].get("in_flight")
                for a in wanted
            )

        poll(
            holds,
            timeout=timeout,
            what=f"agents {sorted(wanted)} idle",
            alive=[self.process],
            details=lambda: f"Agents: {json.dumps(seen)}",
        )

    def brokers(self) -> dict[str, dict[str, Any]]:
        status, body = get_json(f"{self.url}/api/brokers")
        assert status == 200, (status, body)
        return {record["broker_id"]: record for record in body}

    def command(
        self, agent_id: str, command_type: str, content: str = "", **parameters: str
    ) -> dict[str, Any]:
        """POST /api/agents/{id}/commands; fails unless the agent reports success."""
        status, body = post_json(
            f"{self.url}/api/agents/{agent_id}/commands",
            {"type": command_type, "content": content, "parameters": parameters, "timeout_s": 5},
        )
        assert status == 200, (status, body)
        assert body["success"], body
        return dict(body)


def listen_flags(http_port: int, grpc_port: int) -> list[str]:
    """The flags that make a hub listen on these ports, on the loopback address only."""
    return [
        "--host",
        "127.0.0.1",
        "--port",
        str(http_port),
        "--grpc-host",
        "127.0.0.1",
        "--grpc-port",
        str(grpc_port),
    ]


def start_server(
    processes: Processes,
    name: str,
    command: str = "serve",
    *flags: str,
    expect_agents: Iterable[str] = (),
    attempts: int = 3,
) -> Server:
    """`agentcomm serve|dev` on free ports, waited for until /readyz answers 200 (and the
    agents of `expect_agents` are online). A port taken between choosing and binding it is
    retried with new ports."""
    for attempt in range(1, attempts + 1):
        http_port, grpc_port = free_port(), free_port()
        process = processes.agentcomm(name, command, *listen_flags(http_port, grpc_port), *flags)
        server = Server(process, http_port, grpc_port)
        try:
            poll(server.is_ready, timeout=START_TIMEOUT, what=f"{name} ready", alive=[process])
        except AssertionError:
            output = process.output().lower()
            if attempt < attempts and not process.running and any(s in output for s in _PORT_TAKEN):
                process.ended_on_purpose = True  # a lost race for the port, tried again
                process.kill()
                continue
            raise
        server.wait_agents(expect_agents)
        return server
    raise AssertionError("unreachable")


def start_broker(processes: Processes, server: Server, broker_id: str, *flags: str) -> Process:
    """`agentcomm broker` for `server`, waited for until it consumes broker_input_queue."""
    process = processes.agentcomm(
        broker_id,
        "broker",
        "--broker-id",
        broker_id,
        "--broker-name",
        f"e2e {broker_id}",
        *flags,
        env=server.grpc_env,
    )
    wait_broker_routing(process)
    return process


def wait_broker_routing(process: Process, *, after: int = 0) -> None:
    process.wait_for_output(BROKER_READY_LINE, after=after)


def restart(process: Process) -> int:
    """Starts a stopped process again with the same command; returns the log offset from
    which its new output begins."""
    offset = len(process.output())
    process.start()
    return offset


def start_demo_agent(
    processes: Processes,
    server: Server,
    kind: str,
    agent_id: str,
    *flags: str,
    wait: bool = True,
) -> Process:
    """`agentcomm agent echo|typist`, waited for (unless `wait` is false) until the server
    lists it online."""
    process = processes.agentcomm(
        agent_id,
        "agent",
        kind,
        "--name",
        agent_id,
        "--id",
        agent_id,
        *flags,
        env=server.grpc_env,
    )
    if wait:
        server.wait_agents([agent_id], alive=[process])
    return process


def start_worker(
    processes: Processes,
    server: Server,
    agent_id: str,
    *,
    capabilities: Mapping[str, str],
    ms_per_word: int = 20,
    transport: str = "",
    wait: bool = True,
) -> Process:
    """The test agent of agents/worker.py (capabilities and pace of its own), waited for
    (unless `wait` is false) until the server lists it online."""
    process = processes.python(
        agent_id,
        WORKER_SCRIPT,
        env=server.grpc_env
        | {
            "E2E_AGENT_ID": agent_id,
            "E2E_CAPABILITIES": json.dumps(dict(capabilities)),
            "E2E_MS_PER_WORD": str(ms_per_word),
            "E2E_TRANSPORT": transport,
        },
    )
    if wait:
        server.wait_agents([agent_id], alive=[process])
    return process


@contextlib.contextmanager
def fresh_vhost() -> Iterator[str]:
    """A new, empty RabbitMQ vhost for a whole test module (never "/"), deleted afterwards."""
    if shutil.which("rabbitmqctl") is None:
        raise AssertionError("rabbitmqctl is needed to create test vhosts")
    vhost = f"agentcomm_test_{uuid.uuid4().hex[:12]}"
    _rabbitmqctl("add_vhost", vhost)
    try:
        _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield vhost
    finally:
        subprocess.run(
            ["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True, timeout=60
        )


def rabbitmq_env(vhost: str) -> dict[str, str]:
    """The settings that put a process on RabbitMQ in `vhost`."""
    return {
        "MESSAGE_BUS": "rabbitmq",
        "RABBITMQ_HOST": "127.0.0.1",
        "RABBITMQ_PORT": "5672",
        "RABBITMQ_VHOST": vhost,
    }
