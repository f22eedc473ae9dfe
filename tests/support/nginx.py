"""nginx in front of N upstream HTTP servers (hubs) for one test, with the shipped settings.

    async with nginx_in_front([8765, 8766, 8767]) as proxy:
        proxy.url       # http://127.0.0.1:<free port>
        proxy.ws_url    # ws://127.0.0.1:<free port>/ws

The proxy settings are not a copy: the test runs deploy/nginx.conf itself, with the test's
ports put in its upstream `server` lines and its `listen`, inside a main config of the test's
own (pid file, logs and temp paths in a temporary directory, one worker, `daemon off`). What is
shipped is what the cluster tests balance through.

nginx runs as a child process in its own process group: stopping it is SIGTERM to the master
(a fast shutdown, bounded), and SIGKILL to the group when that does not end it, since workers
outlive a master that was killed.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import re
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import free_port

SHIPPED_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "nginx.conf"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
_POLL_SECONDS = 0.02
_LOG_TAIL_CHARS = 3000

# The shipped file's upstream members and listeners: the lines the test's ports replace.
_UPSTREAM_SERVER = re.compile(
    r"^(?P<indent>[ \t]*)server[ \t]+[\w.\-\[\]:]+:\d+(?P<params>[^;\n]*);[ \t]*$", re.M
)
_LISTEN = re.compile(r"^(?P<indent>[ \t]*)listen[ \t]+[^;\n]+;[ \t]*$", re.M)

_MAIN_CONFIG = """\
# Generated for one test around deploy/nginx.conf; removed with its directory.
daemon off;
master_process on;
# One worker: a 2-core machine shared with other test runs, and round robin that is exact.
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
# Every proxied WebSocket holds two connections: room for the benchmark's 1,000 frontends.
worker_rlimit_nofile 8192;

events {{
    worker_connections 4096;
}}

http {{
    # Which upstream answered each request, for a failing test to show.
    log_format upstream '$remote_addr "$request" $status upstream=$upstream_addr '
                        'upstream_status=$upstream_status';
    access_log {dir}/access.log upstream;

    # Debian's defaults live in /var/lib/nginx, which a test must not share (nor may need
    # root to write).
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;

    include {dir}/agentcomm.conf;
}}
"""


class NginxError(RuntimeError):
    """nginx is missing, its config does not fit, or it did not start in time."""


@dataclass(eq=False)
class Nginx:
    """A running nginx: where to connect, and its logs for assertions and failure messages."""

    port: int
    upstream_ports: list[int]
    directory: Path
    _process: asyncio.subprocess.Process | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    def error_log(self) -> str:
        return _read(self.directory / "error.log")

    def access_log(self) -> str:
        return _read(self.directory / "access.log")

    def logs(self) -> str:
        """The tails of both logs, for an assertion's message."""
        return (
            f"--- error.log ---\n{self.error_log()[-_LOG_TAIL_CHARS:]}\n"
            f"--- access.log ---\n{self.access_log()[-_LOG_TAIL_CHARS:]}"
        )

    async def stop(self) -> None:
        process = self._process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                await process.wait()
        except TimeoutError:
            self.kill()
            async with asyncio.timeout(STOP_TIMEOUT):
                await process.wait()

    def kill(self) -> None:
        """SIGKILL to the master and its workers (synchronous: also the atexit path)."""
        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)


# Instances not yet stopped, for the atexit hook (a test abandoned by pytest-timeout never
# reaches its `finally`).
_LIVE: set[Nginx] = set()


@atexit.register
def _kill_live() -> None:
    for proxy in list(_LIVE):
        proxy.kill()
        shutil.rmtree(proxy.directory, ignore_errors=True)


def nginx_binary() -> Path | None:
    """Debian's nginx, wherever PATH has it (/usr/sbin is not on a non-root PATH)."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    return Path(found) if found else None


def render_site(upstream_ports: Sequence[int], listen_port: int, shipped: str) -> str:
    """deploy/nginx.conf with the test's upstream ports and listening port in place."""
    servers = list(_UPSTREAM_SERVER.finditer(shipped))
    listens = list(_LISTEN.finditer(shipped))
    if not servers or not listens:
        raise NginxError(
            f"{SHIPPED_CONFIG} no longer has `server 127.0.0.1:<port> …;` lines in its upstream "
            "and a `listen …;` line: update tests/support/nginx.py along with it."
        )
    first = servers[0]
    members = "\n".join(
        f"{first['indent']}server 127.0.0.1:{port}{first['params']};" for port in upstream_ports
    )
    # Replace from the end so earlier offsets stay valid; the first match of each kind takes
    # the new lines and the rest disappear.
    edits = [(m.start(), m.end(), members if m is first else "") for m in servers]
    edits += [
        (m.start(), m.end(), f"{m['indent']}listen 127.0.0.1:{listen_port};" if i == 0 else "")
        for i, m in enumerate(listens)
    ]
    text = shipped
    for start, end, replacement in sorted(edits, reverse=True):
        text = text[:start] + replacement + text[end:]
    return text


@contextlib.asynccontextmanager
async def nginx_in_front(
    upstream_ports: Sequence[int], *, config: Path = SHIPPED_CONFIG
) -> AsyncIterator[Nginx]:
    """Runs nginx with `config` (deploy/nginx.conf) balancing over `upstream_ports` on
    127.0.0.1; stops it and removes its directory on the way out, whatever happened."""
    if not upstream_ports:
        raise ValueError("nginx needs at least one upstream port.")
    binary = nginx_binary()
    if binary is None:
        raise NginxError("nginx is not installed (apt-get install nginx).")
    proxy = _prepare(upstream_ports, config)
    _LIVE.add(proxy)
    try:
        await _start(proxy, binary)
        yield proxy
    finally:
        try:
            await proxy.stop()
        finally:
            proxy.kill()
            shutil.rmtree(proxy.directory, ignore_errors=True)
            _LIVE.discard(proxy)


def _prepare(upstream_ports: Sequence[int], config: Path) -> Nginx:
    directory = Path(tempfile.mkdtemp(prefix="agentcomm-nginx-"))
    try:
        # Workers run as `nobody` when the master is root: they must reach the temp paths.
        directory.chmod(0o755)
        (directory / "tmp").mkdir()
        port = free_port()
        (directory / "agentcomm.conf").write_text(
            render_site(upstream_ports, port, config.read_text())
        )
        (directory / "nginx.conf").write_text(_MAIN_CONFIG.format(dir=directory))
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return Nginx(port=port, upstream_ports=list(upstream_ports), directory=directory)


async def _start(proxy: Nginx, binary: Path) -> None:
    directory = proxy.directory
    startup = (directory / "startup.log").open("wb")
    try:
        proxy._process = await asyncio.create_subprocess_exec(
            str(binary),
            # -e: even the errors nginx meets before reading the config (Debian's build logs
            # those to stderr, another build to /var/log/nginx) land in the test's directory.
            "-e",
            str(directory / "error.log"),
            "-p",
            str(directory),
            "-c",
            str(directory / "nginx.conf"),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=startup,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        startup.close()
    try:
        async with asyncio.timeout(START_TIMEOUT):
            while not await _accepts(proxy.port):
                if not proxy.running:
                    raise NginxError(
                        f"nginx exited with {proxy._process.returncode}:\n"
                        f"{_read(directory / 'startup.log')}\n{proxy.logs()}"
                    )
                await asyncio.sleep(_POLL_SECONDS)
    except TimeoutError:
        raise NginxError(
            f"nginx did not listen on {proxy.port} within {START_TIMEOUT} s.\n{proxy.logs()}"
        ) from None


async def _accepts(port: int) -> bool:
    try:
        async with asyncio.timeout(1.0):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
