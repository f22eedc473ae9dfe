"""A RabbitMQ cluster of extra nodes on this machine, started for one test and removed after it.

    async with rabbit_cluster(size=3) as cluster:
        cluster.amqp_urls        # one URL per node, for aio-pika
        cluster.hosts            # "127.0.0.1:p1,127.0.0.1:p2,…", the form RABBITMQ_HOSTS takes
        await cluster.stop_node(1)
        await cluster.start_node(1)

The main node (`rabbit@localhost`: ports 5672/15672/25672, /var/lib/rabbitmq) is never
touched. Each extra node is its own Erlang VM, a child process of the test, with its own name
(`agentcomm-<id>-<i>@localhost`), AMQP and distribution ports and a data directory under one
temporary directory, and is started from the package's scripts in /usr/lib/rabbitmq/bin, not
the Debian wrappers in /usr/sbin: those switch to the `rabbitmq` user (HOME /var/lib/rabbitmq,
so the main node's cookie) and write the main node's startup_log.

Isolation from the main node rests on three settings, each of which the main node's files
would otherwise override:

- HOME is the cluster's directory, holding a fresh random `.erlang.cookie` (mode 0400) that
  the nodes and every rabbitmqctl call share. A different cookie from the main node's means a
  wrong node name can only fail: nothing here can join, stop or reset `rabbit@localhost`.
- RABBITMQ_CONF_ENV_FILE points at an empty file instead of /etc/rabbitmq/rabbitmq-env.conf
  (which names the main node), and RABBITMQ_CONFIG_FILE at the node's own rabbitmq.conf
  instead of /etc/rabbitmq/rabbitmq.conf (whose `listeners.tcp.local = 127.0.0.1:5672` would
  make every extra node fail to bind the main node's port).
- RABBITMQ_ENABLED_PLUGINS_FILE lists no plugins, so no management or prometheus listener
  competes for 15672/15692.

Blocking work (the CLI takes ~0.4 s of CPU per call) runs in subprocesses off the event loop,
each with a timeout. Teardown stops every node with `rabbitmqctl stop`, kills its process group
when it does not exit, and removes the directory, whether the test passed, failed or was
cancelled; an atexit hook does the same synchronously for a test that pytest-timeout abandoned.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import secrets
import shutil
import signal
import string
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import free_port

# Measured on the 2-core CI machine (3.10.8, OTP 25, other test runs beside): one node boots
# in ~4.5 s alone and three side by side in 10-14 s; each join (stop_app, join_cluster,
# start_app) takes 3-4 s; a whole 3-node cluster is ready in 16-22 s; a node stops in ~1.5 s
# and starts again (rejoining) in ~4 s. The deadlines leave several times that for a machine
# busier still, and still end a hung start within minutes.
NODE_START_TIMEOUT = 90.0
NODE_STOP_TIMEOUT = 30.0
CLI_TIMEOUT = 60.0
_POLL_SECONDS = 0.2
_LOG_TAIL_CHARS = 3000

# Where the Debian package keeps the real scripts (the /usr/sbin ones are `su` wrappers).
_PACKAGE_SCRIPTS = Path("/usr/lib/rabbitmq/bin")
_NAME_PREFIX = "agentcomm-"

GUEST_URL = "amqp://guest:guest@127.0.0.1:{port}/"


class RabbitClusterError(RuntimeError):
    """A node did not start, join or answer in time; the message carries its log's tail."""


@dataclass(frozen=True)
class NodeSpec:
    """One extra node: its Erlang name, its ports and where its files live."""

    index: int
    name: str
    amqp_port: int
    dist_port: int
    directory: Path

    @property
    def amqp_url(self) -> str:
        return GUEST_URL.format(port=self.amqp_port)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.amqp_port}"

    @property
    def log_file(self) -> Path:
        return self.directory / "log" / f"{self.name}.log"

    @property
    def console_file(self) -> Path:
        return self.directory / "console.log"


@dataclass(eq=False)
class RabbitCluster:
    """Extra RabbitMQ nodes clustered together; node 0 is the one the others joined."""

    cluster_id: str
    directory: Path
    nodes: list[NodeSpec]
    # Seconds each phase took ("boot", "join", "form"), for the test's log: how slow this
    # machine is decides whether the deadlines above still fit.
    timings: dict[str, float] = field(default_factory=dict)
    _processes: dict[int, asyncio.subprocess.Process] = field(default_factory=dict)
    # Every session a node was started in (one per start): the VM's helpers carry no node name
    # on their command line, but stay in the session.
    _sessions: set[int] = field(default_factory=set)
    # Nodes that finished booting since their VM started: only they can stop the orderly way
    # (`rabbitmqctl stop` on a node still booting waits for the boot to finish first).
    _booted: set[int] = field(default_factory=set)

    # -- addresses ---------------------------------------------------------------------------

    @property
    def amqp_urls(self) -> list[str]:
        return [node.amqp_url for node in self.nodes]

    @property
    def hosts(self) -> str:
        return ",".join(node.host for node in self.nodes)

    @property
    def names(self) -> list[str]:
        return [node.name for node in self.nodes]

    def is_running(self, index: int) -> bool:
        """Whether node `index`'s process is alive (not whether RabbitMQ in it has booted)."""
        process = self._processes.get(index)
        return process is not None and process.returncode is None

    # -- the CLI -----------------------------------------------------------------------------

    async def ctl(self, index: int, *args: str, timeout: float = CLI_TIMEOUT) -> str:
        """`rabbitmqctl -n <node index> args…`; returns stdout, raises on a non-zero exit."""
        return await self._cli("rabbitmqctl", self.nodes[index].name, *args, timeout=timeout)

    async def running_nodes(self, index: int = 0) -> list[str]:
        """The running members of the cluster as node `index` sees them."""
        out = await self.ctl(index, "cluster_status", "--formatter", "json")
        status = json.loads(out)
        return sorted(status["running_nodes"])

    async def _cli(self, tool: str, node: str, *args: str, timeout: float) -> str:
        returncode, out, err = await _run(
            [str(_script(tool)), "-n", node, "-q", *args],
            env=self._cli_env(),
            timeout=timeout,
        )
        if returncode != 0:
            raise RabbitClusterError(
                f"{tool} -n {node} {' '.join(args)} exited {returncode}: {(err or out).strip()}"
            )
        return out

    def _cli_env(self) -> dict[str, str]:
        env = _clean_env(self.directory)
        # The CLI is a hidden Erlang node with a listener of its own, by default on one of
        # 35672-35682 shared with every other rabbitmqctl on the machine (other test runs
        # create vhosts all the time); a range of its own keeps ours from running out.
        low = free_port()
        env["RABBITMQ_CTL_DIST_PORT_MIN"] = str(low)
        env["RABBITMQ_CTL_DIST_PORT_MAX"] = str(min(low + 10, 65535))
        env["RABBITMQ_CTL_ERL_ARGS"] = "-kernel inet_dist_use_interface {127,0,0,1}"
        return env

    # -- nodes -------------------------------------------------------------------------------

    async def start_node(self, index: int, *, timeout: float = NODE_START_TIMEOUT) -> None:
        """Starts node `index`'s VM and waits until RabbitMQ in it runs. A node that was in the
        cluster before rejoins it by itself: its membership is in its data directory."""
        if self.is_running(index):
            raise RabbitClusterError(f"Node {self.nodes[index].name} is already running.")
        node = self.nodes[index]
        console = node.console_file.open("ab")
        try:
            self._processes[index] = await asyncio.create_subprocess_exec(
                str(_script("rabbitmq-server")),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=console,
                stderr=asyncio.subprocess.STDOUT,
                env=self._node_env(node),
                cwd=node.directory,
                # Its own process group: the script, the VM and the VM's helpers
                # (erl_child_setup, inet_gethost) can then be killed in one call.
                start_new_session=True,
            )
        finally:
            console.close()
        self._sessions.add(self._processes[index].pid)
        await self.wait_running(index, timeout=timeout)

    async def wait_running(self, index: int, *, timeout: float = NODE_START_TIMEOUT) -> None:
        """Waits until RabbitMQ on node `index` is fully booted (`check_running` passes)."""
        node = self.nodes[index]
        deadline = time.monotonic() + timeout
        last_error = "no answer yet"
        while True:
            process = self._processes.get(index)
            if process is None or process.returncode is not None:
                code = None if process is None else process.returncode
                raise RabbitClusterError(
                    f"Node {node.name} is not running (exit code {code}).\n{self.log_tail(index)}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RabbitClusterError(
                    f"Node {node.name} was not running within {timeout:.0f} s "
                    f"({last_error}).\n{self.log_tail(index)}"
                )
            # The AMQP listener opens at the end of the boot: until then a CLI call would only
            # cost CPU that the booting nodes need.
            if await _accepts(node.amqp_port):
                try:
                    await self._cli(
                        "rabbitmq-diagnostics",
                        node.name,
                        "check_running",
                        timeout=max(1.0, min(remaining, 20.0)),
                    )
                    self._booted.add(index)
                    return
                except (RabbitClusterError, TimeoutError) as exc:
                    last_error = str(exc).splitlines()[0]
            await asyncio.sleep(_POLL_SECONDS)

    async def stop_node(self, index: int, *, timeout: float = NODE_STOP_TIMEOUT) -> None:
        """Stops node `index` the orderly way (`rabbitmqctl stop`), killing it if that fails
        or does not end the process within `timeout`. Its data stays for `start_node`."""
        process = self._processes.get(index)
        if process is None or process.returncode is not None:
            return
        if index not in self._booted:
            await self.kill_node(index)
            return
        self._booted.discard(index)
        with contextlib.suppress(RabbitClusterError, TimeoutError):
            await self.ctl(index, "stop", timeout=timeout)
        try:
            async with asyncio.timeout(timeout):
                await process.wait()
        except TimeoutError:
            await self.kill_node(index)

    async def kill_node(self, index: int) -> None:
        """SIGKILLs node `index` with its helpers: a crash, with no goodbye to its peers."""
        self._booted.discard(index)
        process = self._processes.get(index)
        if process is None or process.returncode is not None:
            return
        _kill_group(process.pid)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(NODE_STOP_TIMEOUT):
                await process.wait()

    def log_tail(self, index: int) -> str:
        """The end of node `index`'s console output and RabbitMQ log, for failure messages."""
        node = self.nodes[index]
        parts = []
        for path in (node.console_file, node.log_file):
            with contextlib.suppress(OSError):
                text = path.read_text(errors="replace")[-_LOG_TAIL_CHARS:]
                parts.append(f"--- {path.name} ---\n{text}")
        return "\n".join(parts) or f"(no log in {node.directory})"

    def _node_env(self, node: NodeSpec) -> dict[str, str]:
        env = _clean_env(self.directory)
        env.update(
            RABBITMQ_NODENAME=node.name,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(node.amqp_port),
            RABBITMQ_DIST_PORT=str(node.dist_port),
            RABBITMQ_MNESIA_BASE=str(node.directory / "mnesia"),
            RABBITMQ_LOG_BASE=str(node.directory / "log"),
            RABBITMQ_CONFIG_FILE=str(node.directory / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(node.directory / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.directory / "enabled_plugins"),
            # The node listens for its peers on loopback only, as the main node does.
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
        )
        return env

    # -- teardown ----------------------------------------------------------------------------

    async def close(self) -> None:
        """Stops every node (in parallel: the cluster is thrown away, so order does not
        matter) and removes the directory."""
        try:
            await asyncio.gather(
                *(self.stop_node(index) for index in range(len(self.nodes))),
                return_exceptions=True,
            )
        finally:
            self._kill_all()
            shutil.rmtree(self.directory, ignore_errors=True)
            _LIVE.discard(self)

    def _kill_all(self) -> None:
        """Synchronous last resort: SIGKILL whatever is left of every node."""
        for process in self._processes.values():
            if process.returncode is None:
                _kill_group(process.pid)

    def leftovers(self) -> list[str]:
        """Processes still alive that belong to this cluster (none, once it is closed): in one
        of its nodes' sessions, or naming one of its nodes."""
        marker = f"{_NAME_PREFIX}{self.cluster_id}-".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            with contextlib.suppress(OSError):
                cmdline = (entry / "cmdline").read_bytes()
                # Field 6 of /proc/<pid>/stat is the session; the name before it may hold
                # spaces, so count from the closing parenthesis.
                stat = (entry / "stat").read_text()
                session = int(stat.rsplit(")", 1)[1].split()[3])
                if session in self._sessions or marker in cmdline:
                    command = cmdline.replace(b"\0", b" ")[:200].decode(errors="replace")
                    found.append(f"{entry.name}: {command}")
        return found

    def abandon(self) -> None:
        """What atexit does for a cluster whose test never reached its teardown."""
        self._kill_all()
        shutil.rmtree(self.directory, ignore_errors=True)


# Clusters not yet closed, for the atexit hook.
_LIVE: set[RabbitCluster] = set()


@atexit.register
def _abandon_live_clusters() -> None:
    for cluster in list(_LIVE):
        cluster.abandon()


@contextlib.asynccontextmanager
async def rabbit_cluster(
    size: int = 3, *, start_timeout: float = NODE_START_TIMEOUT
) -> AsyncIterator[RabbitCluster]:
    """Starts `size` extra RabbitMQ nodes, joins them into one cluster and yields it running;
    stops and removes them all on the way out, whatever happened inside."""
    if size < 1:
        raise ValueError("A cluster needs at least one node.")
    cluster = _prepare(size)
    _LIVE.add(cluster)
    try:
        await _form(cluster, start_timeout)
        yield cluster
    finally:
        await cluster.close()


def rabbitmq_installed() -> bool:
    return _script_or_none("rabbitmq-server") is not None


# -- setting up ------------------------------------------------------------------------------


def _prepare(size: int) -> RabbitCluster:
    cluster_id = secrets.token_hex(4)
    directory = Path(tempfile.mkdtemp(prefix=f"{_NAME_PREFIX}rabbit-{cluster_id}-"))
    home = directory / "home"
    home.mkdir()
    cookie = home / ".erlang.cookie"
    alphabet = string.ascii_uppercase
    cookie.write_text("".join(secrets.choice(alphabet) for _ in range(32)))
    # Erlang refuses a cookie file that others can read.
    cookie.chmod(0o400)
    (directory / "enabled_plugins").write_text("[].\n")
    (directory / "rabbitmq-env.conf").write_text(
        "# Empty on purpose: /etc/rabbitmq/rabbitmq-env.conf names the main node.\n"
    )
    nodes = []
    for index in range(size):
        node_dir = directory / f"node{index}"
        (node_dir / "mnesia").mkdir(parents=True)
        (node_dir / "log").mkdir()
        # The disk alarm's default (50 MB free) is never the point of a test; a nearly full
        # CI disk must not block publishers on the extra nodes.
        (node_dir / "rabbitmq.conf").write_text("disk_free_limit.absolute = 1MB\n")
        nodes.append(
            NodeSpec(
                index=index,
                name=f"{_NAME_PREFIX}{cluster_id}-{index}@localhost",
                amqp_port=free_port(),
                dist_port=free_port(),
                directory=node_dir,
            )
        )
    return RabbitCluster(cluster_id=cluster_id, directory=directory, nodes=nodes)


async def _form(cluster: RabbitCluster, start_timeout: float) -> None:
    # Every node boots at once (boots are mostly waiting on disk and timers), then joins node 0
    # one after the other: concurrent joins to the same node are what the RabbitMQ docs warn
    # against.
    began = time.monotonic()
    starts = [
        cluster.start_node(index, timeout=start_timeout) for index in range(len(cluster.nodes))
    ]
    results = await asyncio.gather(*starts, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    booted = time.monotonic()
    first = cluster.nodes[0].name
    for index in range(1, len(cluster.nodes)):
        await cluster.ctl(index, "stop_app")
        await cluster.ctl(index, "join_cluster", first)
        await cluster.ctl(index, "start_app")
        await cluster.wait_running(index, timeout=start_timeout)
    running = await cluster.running_nodes()
    done = time.monotonic()
    cluster.timings.update(
        boot=round(booted - began, 1), join=round(done - booted, 1), form=round(done - began, 1)
    )
    if running != sorted(cluster.names):
        raise RabbitClusterError(f"Cluster formed with {running}, expected {cluster.names}.")


# -- helpers ---------------------------------------------------------------------------------


def _script_or_none(tool: str) -> Path | None:
    packaged = _PACKAGE_SCRIPTS / tool
    if packaged.exists():
        return packaged
    # Elsewhere (the generic-unix tarball, Homebrew) the scripts on PATH are the real ones.
    found = shutil.which(tool)
    return Path(found) if found else None


def _script(tool: str) -> Path:
    path = _script_or_none(tool)
    if path is None:
        raise RabbitClusterError(f"{tool} is not installed (apt-get install rabbitmq-server).")
    return path


def _clean_env(directory: Path) -> dict[str, str]:
    """The test's environment without any RABBITMQ_*/ERL_* setting (a developer's shell or the
    hub's own RABBITMQ_HOST must not leak into a node), with HOME at the cluster's cookie."""
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("RABBITMQ_", "ERL_"))
    }
    env["HOME"] = str(directory / "home")
    env["RABBITMQ_CONF_ENV_FILE"] = str(directory / "rabbitmq-env.conf")
    # Only matters when no epmd runs yet (no main node): the one a node starts stays local.
    env["ERL_EPMD_ADDRESS"] = "127.0.0.1"
    return env


async def _run(
    command: Sequence[str], *, env: dict[str, str], timeout: float
) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await process.communicate()
    except BaseException:
        # Timed out or cancelled: a CLI left behind would hold its port and our node.
        _kill_group(process.pid)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace"), err.decode(errors="replace")


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


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
