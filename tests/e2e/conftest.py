"""Fixtures of the end-to-end tests.

- The stack scenarios (test_stack.py) run on both buses: `bus` is parametrised over the
  in-process bus and RabbitMQ, per module, and `stack` starts the processes for it (stacks.py).
  A scenario marked `only_on(...)` runs on those buses only. Under CI (CI=true) a missing
  RabbitMQ is a failure, never a skip.
- Browser tests: a real `agentcomm dev` process and Debian's Chromium driven by Playwright.
  Under CI (CI=true) a missing Chromium is a failure, never a skip.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.conftest import ON_CI, free_port
from tests.e2e.processes import agentcomm_command, listen_flags
from tests.e2e.stack_chat import Chat
from tests.e2e.stacks import BUSES, Bus, Stack, running_stack

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Generous: the machine is small and other suites may run at the same time.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
UI_TIMEOUT_MS = 15_000


def _get_json(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None


@dataclass
class AgentcommProcess:
    """One `agentcomm …` subprocess with its output in a log file."""

    name: str
    args: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None, "already running"
        env = os.environ | {
            "PYTHONUNBUFFERED": "1",
            "LOG_LEVEL": "INFO",
            # The default history database, in the test's own directory.
            "DATA_DIR": str(self.log_path.parent / "data"),
        }
        self._log = self.log_path.open("ab")
        self._log.write(f"\n===== start {' '.join(self.args)}\n".encode())
        self._log.flush()
        self.process = subprocess.Popen(
            [*agentcomm_command(), *self.args],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # a Ctrl+C meant for pytest is not also sent here
        )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, signum: int = signal.SIGINT, timeout: float = STOP_TIMEOUT) -> int:
        """Sends `signum` and waits for the exit; returns the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"{self.name} did not exit within {timeout} s of {signal.Signals(signum).name}"
                f"\n{self.output()[-4000:]}"
            ) from None
        finally:
            self._close_log()
        return code

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


@dataclass
class DevServer(AgentcommProcess):
    """`agentcomm dev`: server, reference broker and the demo agents echo and typist."""

    http_port: int = 0
    grpc_port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/"

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Waits for GET /readyz = 200 and both demo agents online."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise AssertionError(f"{self.name} exited early:\n{self.output()[-4000:]}")
            try:
                status, _ = _get_json(f"{self.url}readyz")
                if status == 200:
                    _, agents = _get_json(f"{self.url}api/agents")
                    online = {a["agent_id"] for a in agents or [] if a.get("status") == "online"}
                    if {"echo", "typist"} <= online:
                        return
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"{self.name} not ready within {timeout} s:\n{self.output()[-4000:]}")


def dev_server(
    log_dir: Path, *extra: str, http_port: int = 0, grpc_port: int = 0, name: str = "dev"
) -> DevServer:
    http_port = http_port or free_port()
    grpc_port = grpc_port or free_port()
    args = [
        "dev",
        *listen_flags(http_port, grpc_port),
        "--periodic-status-interval",
        "5",
        "--shutdown-timeout",
        "5",
        *extra,
    ]
    return DevServer(
        name=name,
        args=args,
        log_path=log_dir / f"{name}.log",
        http_port=http_port,
        grpc_port=grpc_port,
    )


@pytest.fixture(scope="session")
def chromium_path() -> Path:
    if CHROMIUM.exists():
        return CHROMIUM
    message = f"Chromium is not installed at {CHROMIUM}"
    if ON_CI:
        pytest.fail(f"{message} (CI=true: this is a failure)")
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser(chromium_path: Path) -> Iterator[Browser]:
    """One Chromium per test module; every test gets its own context (fresh sessionStorage)."""
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(chromium_path), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(UI_TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield page
    finally:
        context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def stop_checked(process: AgentcommProcess) -> None:
    """SIGINT, then: exited with 0 and without a traceback."""
    if process.process is None:
        return
    if not process.running:
        process.kill()
        code = process.process.returncode
        raise AssertionError(
            f"{process.name} had already exited ({code}):\n{process.output()[-4000:]}"
        )
    code = process.stop(signal.SIGINT)
    output = process.output()
    assert code == 0, f"{process.name} exited with {code} after SIGINT:\n{output[-4000:]}"
    assert "Traceback" not in output, f"{process.name} logged a traceback:\n{output[-4000:]}"


@pytest.fixture(scope="module")
def shared_dev(
    tmp_path_factory: pytest.TempPathFactory, chromium_path: Path
) -> Iterator[DevServer]:
    """One `agentcomm dev` for the scenarios that neither stop nor restart it."""
    server = dev_server(tmp_path_factory.mktemp("dev"), name="shared-dev")
    server.start()
    try:
        server.wait_ready()
    except BaseException:
        server.kill()
        raise
    try:
        yield server
    finally:
        stop_checked(server)


@pytest.fixture
def processes(chromium_path: Path) -> Iterator[list[AgentcommProcess]]:
    """Processes a test starts itself, in start order. Those still running at the end are
    stopped with SIGINT in reverse order and must exit cleanly; the ones the test killed on
    purpose are only reaped."""
    started: list[AgentcommProcess] = []
    try:
        yield started
    finally:
        problems: list[str] = []
        for process in reversed(started):
            if not process.running:
                process.kill()
                continue
            try:
                stop_checked(process)
            except AssertionError as exc:
                problems.append(str(exc))
        assert not problems, "\n\n".join(problems)


# -- the stack scenarios, on each bus ----------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "only_on(*buses): a stack scenario that needs what only these buses have"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "bus" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("only_on")
    buses = marker.args if marker is not None else BUSES
    assert set(buses) <= set(BUSES), f"unknown buses in {marker}"
    metafunc.parametrize(
        "bus",
        [
            pytest.param(bus, marks=[pytest.mark.rabbitmq] if bus == "rabbitmq" else [])
            for bus in buses
        ],
        scope="module",
    )


@pytest.fixture(scope="module")
def stack(
    bus: Bus, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """The stack on `bus`, started once per module and bus."""
    if bus == "rabbitmq":
        request.getfixturevalue("rabbitmq_available")
    with running_stack(bus, tmp_path_factory.mktemp(f"e2e-{bus}")) as stack:
        yield stack


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed stack scenario reports the tail of every process's log with it."""
    report = yield
    stack = getattr(item, "funcargs", {}).get("stack")
    if report.failed and isinstance(stack, Stack):
        report.sections.append(("logs of the stack's processes", stack.processes.tails()))
    return report


@pytest.fixture
async def chat(stack: Stack) -> AsyncIterator[Chat]:
    async with await Chat.open(stack.server.ws_url, f"e2e-{stack.bus}") as chat:
        yield chat


@pytest.fixture
def one_broker(stack: Stack) -> Iterator[str]:
    """Only one broker routes during the test (conversation stickiness and chunk order are
    kept per broker, see docs/broker.md); yields its id."""
    with stack.one_broker() as broker_id:
        yield broker_id
