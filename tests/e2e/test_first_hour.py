"""The first hour, as a newcomer meets it: `agentcomm` commands and an agent script started as
processes on real ports, and what each mistake prints — one line that says what to change,
never silence, never a traceback.
"""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from agentcomm import __version__
from agentcomm.bench.scenarios import SCENARIO_NAMES
from tests.conftest import free_port
from tests.e2e.processes import (
    Processes,
    Server,
    agentcomm_command,
    clean_environment,
    listen_flags,
    start_demo_agent,
    start_server,
)
from tests.integration.test_agents_guide import guide_example
from tests.support.frontend import Frontend, of_type

# The wait for a command that is expected to stop at once; generous for a busy machine.
COMMAND_TIMEOUT = 60.0
FRAME_TIMEOUT = 15.0
# "12:34:56 INFO    agentcomm.sdk.runtime: …": what the hub's logging set-up writes.
LOG_LINE = r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR) +[\w.]+: "
SHORT_SECRET = "abc"
GOOD_SECRET = "a-secret-of-more-than-thirty-two-bytes-for-hs256"


def run(*args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`agentcomm ARGS` to its end, with only the settings given in `env`."""
    return subprocess.run(
        [*agentcomm_command(), *args],
        env=clean_environment() | dict(env or {}),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )


def said(done: subprocess.CompletedProcess[str]) -> list[str]:
    """Every line a finished command wrote, on either stream."""
    return (done.stdout + done.stderr).strip().splitlines()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    started = Processes(tmp_path, {"PYTHONUNBUFFERED": "1"})
    try:
        yield started
    finally:
        problems = started.close()
        assert not problems, "\n".join(problems)


def dev(processes: Processes, *flags: str) -> Server:
    """`agentcomm dev` (what `make run` starts), ready, with its demo agents online."""
    return start_server(processes, "dev", "dev", *flags, expect_agents=("echo", "typist"))


# -- a port that is taken ----------------------------------------------------------------------


def test_a_second_hub_on_a_taken_grpc_port_stops_before_anything_runs(
    processes: Processes,
) -> None:
    first = start_server(processes, "first", "serve", "--message-bus", "memory")
    done = run("dev", *listen_flags(free_port(), first.grpc_port))
    assert done.returncode == 1
    [line] = said(done)
    assert re.match(LOG_LINE, line), line
    assert f"gRPC port {first.grpc_port} on 127.0.0.1 is in use" in line
    assert "set GRPC_PORT=<another port>, or GRPC_PORT=0 for any free port." in line
    # The second stack's broker never reached the first hub, nor did its agents.
    assert first.brokers() == {}
    assert first.agents() == {}


def test_a_taken_http_port_stops_serve_before_it_reaches_for_rabbitmq() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        # RabbitMQ is not there: a start that tried the bus first would say so, for a while.
        done = run(
            "serve",
            *listen_flags(taken, 0),
            "--message-bus",
            "rabbitmq",
            "--rabbitmq-port",
            str(free_port()),
        )
    assert done.returncode == 1
    [line] = said(done)
    assert f"HTTP port {taken} on 127.0.0.1 is in use" in line
    assert "set PORT=<another port>, or PORT=0 for any free port." in line


# -- an agent that cannot receive its work -------------------------------------------------------


async def test_an_amqp_agent_beside_the_in_process_bus_is_refused_and_not_listed(
    processes: Processes,
) -> None:
    server = dev(processes)  # from this thread: a child outlives only the thread that made it
    done = await asyncio.to_thread(
        run, "agent", "echo", "--id", "stray", "--transport", "amqp", env=server.grpc_env
    )
    assert done.returncode == 1
    [line] = said(done)
    assert re.match(LOG_LINE, line), line
    assert "The hub refused the echo agent: This hub runs its in-process bus" in line
    assert "MESSAGE_BUS=memory" in line
    assert "--transport grpc" in line
    assert "stray" not in await asyncio.to_thread(server.agents)
    # Its messages are not "delivered" to where nobody reads: the sender is told at once.
    async with await Frontend.registered(server.ws_url) as alice:
        await alice.send_text("anyone there?", receiver_id="stray", message_id="m-stray")
        error = await alice.next(of_type("ERROR"), timeout=FRAME_TIMEOUT)
        echoes = [
            frame.get("routing_status")
            for frame in alice.take_buffered()
            if frame.get("message_id") == "m-stray"
        ]
    assert error["error_code"] == "agent_offline"
    assert "delivered" not in echoes


# -- what an agent says: registered, where, how; stopping ----------------------------------------


def test_the_guide_agent_says_where_it_registered_how_and_how_to_stop_it(
    processes: Processes, tmp_path: Path
) -> None:
    server = dev(processes)
    script = tmp_path / "greeter.py"
    script.write_text(guide_example())
    greeter = processes.python("greeter", script, env=server.grpc_env | {"MESSAGE_BUS": "memory"})
    server.wait_agents(["greeter"], alive=[greeter])
    greeter.wait_for_output("Ctrl+C stops it.")
    assert greeter.stop(signal.SIGINT) == 0
    # Every line but the harness's own header.
    lines = [line for line in greeter.output().splitlines() if line and not line.startswith("=")]
    assert all(re.match(LOG_LINE, line) for line in lines), lines
    registered = (
        f"Agent greeter registered as greeter with the hub at 127.0.0.1:{server.grpc_port}, "
        "whose bus is memory; its messages come over gRPC (transport grpc). Ctrl+C stops it."
    )
    assert any(line.endswith(registered) for line in lines), lines
    assert any(
        line.endswith(f"Agent greeter unregistered from the hub at 127.0.0.1:{server.grpc_port}")
        for line in lines
    ), lines
    assert lines[-1].endswith("Agent greeter stopped"), lines


def test_the_demo_agents_of_make_run_name_the_bus_of_the_banner(processes: Processes) -> None:
    server = dev(processes)
    output = server.process.output()
    assert "bus: memory" in output  # the banner
    for kind in ("echo", "typist"):
        assert (
            f"Agent {kind} registered as {kind} with the hub at 127.0.0.1:{server.grpc_port}, "
            "whose bus is memory; it takes its messages from the hub's in-process bus "
            "(transport memory)" in output
        )
    assert "amqp" not in output


async def test_the_guide_agent_without_message_bus_memory_is_told_what_to_set(
    processes: Processes, tmp_path: Path
) -> None:
    server = dev(processes)  # from this thread: a child outlives only the thread that made it
    script = tmp_path / "greeter.py"
    script.write_text(guide_example())
    # The reader forgot MESSAGE_BUS=memory: the SDK would consume RabbitMQ, where nothing comes.
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(script)],
        env=clean_environment() | server.grpc_env,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    assert done.returncode == 1
    [line] = said(done)
    assert re.match(LOG_LINE, line), line
    assert "The hub refused agent greeter:" in line
    assert "MESSAGE_BUS=memory" in line
    assert "greeter" not in await asyncio.to_thread(server.agents)


# -- a graceful stop says what it waits for --------------------------------------------------------


async def test_ctrl_c_while_a_reply_streams_says_what_the_stop_waits_for(
    processes: Processes,
) -> None:
    server = dev(processes, "--shutdown-timeout", "10")
    await asyncio.to_thread(server.command, "typist", "pace", ms="2000")
    async with await Frontend.registered(server.ws_url, capabilities={"stream": True}) as alice:
        await alice.send_text("slowly now", receiver_id="typist", message_id="m-slow")
        await alice.next(of_type("REPLY_CHUNK"), timeout=FRAME_TIMEOUT)
        offset = len(server.process.output())
        server.process.send_signal(signal.SIGINT)
        await asyncio.to_thread(server.process.wait_for_output, "SIGINT received", after=offset)
        server.process.send_signal(signal.SIGINT)
        assert server.process.popen is not None
        assert await asyncio.to_thread(server.process.popen.wait, 10) == 130
    assert (
        "SIGINT received: stopping, waiting up to 10 s for 1 reply in progress — Ctrl+C again "
        "to stop now" in server.process.output()
    )


def test_a_standalone_agent_says_what_its_stop_waits_for_and_then_stops(
    processes: Processes,
) -> None:
    server = dev(processes)
    typist = start_demo_agent(
        processes, server, "typist", "slow-typist", "--transport", "grpc", "--shutdown-timeout", "2"
    )
    server.command("slow-typist", "pace", ms="5000")

    async def ask() -> None:
        async with await Frontend.registered(server.ws_url, capabilities={"stream": True}) as bob:
            await bob.send_text("take your time", receiver_id="slow-typist")
            await bob.next(of_type("REPLY_CHUNK"), timeout=FRAME_TIMEOUT)
            offset = len(typist.output())
            typist.send_signal(signal.SIGINT)
            await asyncio.to_thread(typist.wait_for_output, "SIGINT received", after=offset)

    asyncio.run(ask())
    assert typist.popen is not None
    assert typist.popen.wait(timeout=20) == 0
    output = typist.output()
    assert (
        "SIGINT received: stopping, waiting up to 2 s for 1 reply in progress — Ctrl+C again to "
        "stop now" in output
    )
    assert "Agent slow-typist gave 1 unfinished messages back after 2.0 s" in output
    assert output.rstrip().endswith("Agent slow-typist stopped")


async def test_a_hub_stopping_says_whom_it_lets_go(processes: Processes) -> None:
    server = start_server(processes, "hub", "serve", "--message-bus", "memory")
    async with await Frontend.registered(server.ws_url):
        offset = len(server.process.output())
        server.process.send_signal(signal.SIGINT)
        await asyncio.to_thread(server.process.wait_for_output, "SIGINT received", after=offset)
    assert server.process.popen is not None
    assert await asyncio.to_thread(server.process.popen.wait, 20) == 0
    assert (
        "SIGINT received: stopping, waiting up to 10 s for 1 frontend to be told the hub is "
        "going away — Ctrl+C again to stop now" in server.process.output()
    )


# -- the command line -----------------------------------------------------------------------------


def test_agentcomm_alone_shows_the_commands() -> None:
    done = run()
    assert done.returncode == 0
    assert done.stdout.startswith("usage: agentcomm")
    for command in ("serve", "broker", "agent", "dev", "token", "bench"):
        assert re.search(rf"^\s+{command}\s+\S", done.stdout, re.MULTILINE), command
    assert done.stderr == ""


def test_agentcomm_says_its_version() -> None:
    done = run("--version")
    assert (done.returncode, done.stdout.strip()) == (0, f"agentcomm {__version__}")


def test_help_shows_defaults_and_choices_of_the_command_itself() -> None:
    dev_help = run("dev", "--help").stdout
    assert "--message-bus {rabbitmq,memory}" in dev_help
    assert "which message bus carries chat traffic (default: memory)" in " ".join(dev_help.split())
    assert "--bus " not in dev_help
    serve_help = " ".join(run("serve", "--help").stdout.split())
    assert "which message bus carries chat traffic (default: rabbitmq)" in serve_help
    assert "--log-level {DEBUG,INFO,WARNING,ERROR,CRITICAL}" in serve_help
    token_help = run("token", "--help").stdout
    assert "--rabbitmq" not in token_help
    assert "--grpc-tls" not in token_help
    assert "what the token may do" in token_help
    bench_help = run("bench", "--help").stdout
    # Every scenario is a choice, in the order `all` runs them (the registry's own order).
    assert "{" + ",".join((*SCENARIO_NAMES, "all")) + "}" in bench_help


def test_dev_takes_one_spelling_of_its_bus() -> None:
    done = run("dev", "--bus", "memory")
    assert done.returncode == 2
    assert "unrecognized arguments: --bus memory" in done.stderr


def test_log_levels_are_taken_in_any_case() -> None:
    done = run(
        "token",
        "--role",
        "admin",
        "--sub",
        "ops",
        env={"AUTH_SECRET": GOOD_SECRET, "LOG_LEVEL": "debug"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(".") == 2  # a JWT, nothing else


# -- tokens and secrets --------------------------------------------------------------------------


def test_token_refuses_a_short_secret_in_one_line() -> None:
    done = run("token", "--role", "admin", "--sub", "ops", env={"AUTH_SECRET": SHORT_SECRET})
    assert done.returncode == 2
    assert done.stdout == ""
    [line] = said(done)
    assert line.startswith("agentcomm token: AUTH_SECRET is 3 bytes long; it must have at least 32")
    assert "Warning" not in done.stderr


def test_token_refuses_a_lifetime_that_is_over_before_it_starts() -> None:
    done = run(
        "token", "--role", "admin", "--sub", "ops", "--ttl", "-5", env={"AUTH_SECRET": GOOD_SECRET}
    )
    assert done.returncode == 2
    assert said(done) == ["agentcomm token: --ttl must be a number of seconds above 0; got -5"]


@pytest.mark.parametrize("command", ["serve", "dev"])
def test_the_hub_refuses_a_short_secret_before_it_listens(command: str) -> None:
    http_port = free_port()
    done = run(
        command,
        *listen_flags(http_port, 0),
        "--message-bus",
        "memory",
        env={"AUTH_SECRET": SHORT_SECRET},
    )
    assert done.returncode == 2
    [line] = said(done)
    assert re.match(LOG_LINE, line), line
    assert "AUTH_SECRET is 3 bytes long; it must have at least 32" in line
