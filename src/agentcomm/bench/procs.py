"""Child processes the harness starts, watches and always stops, and small loopback helpers.

Each child gets its own session (Ctrl+C in the terminal reaches only the harness, which then
stops the children in reverse order: SIGTERM, a bounded wait, SIGKILL). stdout is read all the
time so a chatty child never blocks on a full pipe; stderr goes to a log file that is shown
when the child fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from agentcomm.config import Settings

log = logging.getLogger(__name__)


class BenchError(Exception):
    """A part of the benchmark could not be started or did not behave; the text says which."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def raise_fd_limit(wanted: int) -> int:
    """Raises the soft open-file limit towards `wanted` (children inherit it); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def settings_env(settings: Settings, **overrides: Any) -> dict[str, str]:
    """The environment that gives a child process these settings (and the parent's PATH)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key.upper() not in {name.upper() for name in Settings.model_fields}
    }
    values = settings.model_dump()
    values.update(overrides)
    for name, value in values.items():
        env[name.upper()] = str(value)
    env["PYTHONUNBUFFERED"] = "1"
    return env


STDOUT_LINE_LIMIT = 64 * 2**20


class Child:
    """One started process."""

    STOP_TIMEOUT = 10.0

    def __init__(self, name: str, process: asyncio.subprocess.Process, log_path: Path) -> None:
        self.name = name
        self.process = process
        self.log_path = log_path
        self.lines: list[str] = []
        self._line_added = asyncio.Event()
        self._reader = asyncio.create_task(self._read_stdout(), name=f"stdout-{name}")

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.returncode is None

    async def _read_stdout(self) -> None:
        stream = self.process.stdout
        if stream is None:
            return
        while line := await stream.readline():
            self.lines.append(line.decode(errors="replace").rstrip("\n"))
            self._line_added.set()
        self._line_added.set()

    def send_line(self, text: str) -> None:
        """Writes one line to the child's stdin (started with `stdin_pipe=True`)."""
        stdin = self.process.stdin
        if stdin is None or stdin.is_closing():
            raise BenchError(f"{self.name} has no open stdin.")
        stdin.write(text.encode() + b"\n")

    async def wait_for_line(
        self, match: Callable[[str], bool], timeout: float, *, skip: int = 0
    ) -> str:
        """The first stdout line (after the first `skip`) that matches; BenchError when the
        child exits or time is up."""
        seen = skip
        try:
            async with asyncio.timeout(timeout):
                while True:
                    for line in self.lines[seen:]:
                        if match(line):
                            return line
                    seen = len(self.lines)
                    if self._reader.done():
                        await self.process.wait()
                        raise BenchError(
                            f"{self.name} exited with code {self.process.returncode} before "
                            f"it was ready.\n{self.log_tail()}"
                        )
                    self._line_added.clear()
                    await self._line_added.wait()
        except TimeoutError:
            raise BenchError(
                f"{self.name} was not ready within {timeout:.0f} s.\n{self.log_tail()}"
            ) from None

    async def wait_for_json(self, key: str, timeout: float) -> dict[str, Any]:
        """The first stdout line that is a JSON object holding `key`."""

        def has_key(line: str) -> bool:
            return line.startswith("{") and f'"{key}"' in line

        line = await self.wait_for_line(has_key, timeout)
        data = orjson.loads(line)
        if not isinstance(data, dict):
            raise BenchError(f"{self.name} printed {line!r}, not a JSON object.")
        return data

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return f"(no log at {self.log_path})"
        tail = "\n".join(text.splitlines()[-lines:])
        return f"--- last lines of {self.log_path} ---\n{tail}" if tail else "(empty log)"

    async def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM, wait, then SIGKILL; returns the exit code."""
        timeout = self.STOP_TIMEOUT if timeout is None else timeout
        if self.process.stdin is not None and not self.process.stdin.is_closing():
            self.process.stdin.close()
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(timeout):
                    await self.process.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(5):
                        await self.process.wait()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, ValueError, OSError):
            await self._reader
        return self.process.returncode


class Children:
    """The processes of one measurement; `stop_all` stops them newest first."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._children: list[Child] = []

    async def start(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        *,
        cwd: str | None = None,
        stdin_pipe: bool = False,
    ) -> Child:
        log_path = self.log_dir / f"{name}.log"
        if cwd is None:
            # A folder of its own under the run's temporary one, so that what a child keeps
            # relative to where it runs (the hub's DATA_DIR and its history) goes with the run
            # instead of growing in the checkout and skewing the next run.
            workdir = self.log_dir / f"{name}.d"
            workdir.mkdir(exist_ok=True)
            cwd = str(workdir)
        with log_path.open("ab") as log_file:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if stdin_pipe else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=log_file,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
                # A result line (every latency of a phase) can be megabytes long.
                limit=STDOUT_LINE_LIMIT,
            )
        child = Child(name, process, log_path)
        self._children.append(child)
        return child

    async def start_agentcomm(
        self, name: str, args: Sequence[str], env: Mapping[str, str]
    ) -> Child:
        return await self.start(name, [sys.executable, "-m", "agentcomm", *args], env)

    async def start_module(
        self, name: str, module: str, args: Sequence[str], env: Mapping[str, str]
    ) -> Child:
        return await self.start(name, [sys.executable, "-m", module, *args], env)

    async def stop_all(self) -> None:
        # Shielded: a second Ctrl+C while stopping must not leave processes behind.
        while self._children:
            child = self._children.pop()
            try:
                await asyncio.shield(child.stop())
            except Exception:
                # Whatever went wrong with this one, the others are still stopped.
                log.exception("Stopping %s failed", child.name)
                with contextlib.suppress(ProcessLookupError):
                    child.process.kill()

    def check_alive(self) -> None:
        for child in self._children:
            if not child.running:
                raise BenchError(
                    f"{child.name} exited with code {child.process.returncode} during the "
                    f"measurement.\n{child.log_tail()}"
                )


async def http_get(port: int, path: str, *, timeout: float = 5.0) -> tuple[int, bytes]:
    """A minimal HTTP/1.0 GET to 127.0.0.1:port: (status, body)."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            request = f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
            writer.write(request.encode())
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        raise BenchError(f"Not an HTTP answer from port {port}: {head[:80]!r}") from None
    return status, body


async def wait_http_ok(port: int, path: str, timeout: float, watch: Child | None = None) -> bytes:
    """Polls GET path until it answers 200; BenchError after `timeout` or if `watch` exits."""
    last = "no answer"
    try:
        async with asyncio.timeout(timeout):
            while True:
                if watch is not None and not watch.running:
                    raise BenchError(
                        f"{watch.name} exited with code {watch.process.returncode}.\n"
                        f"{watch.log_tail()}"
                    )
                try:
                    status, body = await http_get(port, path, timeout=2.0)
                except (OSError, TimeoutError, BenchError) as exc:
                    last = repr(exc)
                else:
                    if status == 200:
                        return body
                    last = f"HTTP {status}"
                await asyncio.sleep(0.1)
    except TimeoutError:
        tail = f"\n{watch.log_tail()}" if watch is not None else ""
        raise BenchError(
            f"GET {path} on port {port} did not answer 200 within {timeout:.0f} s ({last}).{tail}"
        ) from None


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (Linux /proc)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise BenchError(f"No VmRSS for process {pid}.")


def find_process(command: str, *, without: str = "") -> int | None:
    """The pid of a running process whose command name is `command` and whose command line
    does not contain `without` (RabbitMQ's beam.smp, not rabbitmqctl's), so that its CPU time
    can be shown beside the harness's own processes."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != command:
                continue
            if without and without.encode() in (entry / "cmdline").read_bytes():
                continue
            return int(entry.name)
        except OSError:
            continue
    return None


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks
