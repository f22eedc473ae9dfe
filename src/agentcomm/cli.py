"""The `agentcomm` command: serve | broker | agent | dev | token | bench.

A command takes a flag for each setting it reads (`--grpc-port 50052` mirrors `GRPC_PORT=50052`),
grouped in its `--help` as `agentcomm.config.Settings` groups them; flags win over the
environment. The environment applies to every setting in every command.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import typing
from collections.abc import Callable, Coroutine, Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple

from agentcomm import __version__
from agentcomm.config import (
    Settings,
    SettingsError,
    SettingsGroup,
    fields_in,
    group_of,
    load_settings,
)
from agentcomm.logging_setup import configure_logging
from agentcomm.telemetry import start_tracing

SETTINGS_DEST = "settings__"

_G = SettingsGroup
# The settings groups each command reads: its flags are exactly their fields. Every command
# logs (logging_setup.configure_logging). Where the reads are, to check these lists against:
#   serve  - server/ and bus/factory.py: everything but the client side (auth_token, tls_client)
#   broker - broker/runner.py: hub, bus (create_bus), consumer_concurrency and agent_timeout,
#            shutdown_timeout, auth_token, tls_client (grpc_channel.ClientTls.from_settings)
#   agent  - sdk/agent.py: hub (grpc_target), bus (choose_transport, create_bus), auth_token,
#            tls_client, max_message_bytes; sdk/runtime.py: heartbeat_interval, shutdown_timeout
#   dev    - dev.py: what serve reads, and tls_client for its in-process agents' gRPC clients
#            (their tokens are minted by the stack, not read from AUTH_TOKEN)
#   a2a-bridge - what agent reads (sdk/), and a2a_remote (gateways/a2a/bridge.py)
#   token  - auth_secret
#   bench  - bench/: the bus (its floor, its vhost) and the log level; the processes it starts
#            are handed its whole Settings through their environment (bench/procs.settings_env)
_SERVER_GROUPS = frozenset(
    {
        _G.HUB,
        _G.BUS,
        _G.SERVER,
        _G.LIMITS,
        _G.AGENT_LINK,
        _G.ROUTING,
        _G.LIFECYCLE,
        _G.AUTH,
        _G.TLS_SERVER,
        _G.LOGGING,
    }
)
_CLIENT_GROUPS = frozenset(
    {_G.HUB, _G.BUS, _G.LIFECYCLE, _G.AUTH_CLIENT, _G.TLS_CLIENT, _G.LOGGING}
)
COMMAND_GROUPS: Mapping[str, frozenset[SettingsGroup]] = MappingProxyType(
    {
        "serve": _SERVER_GROUPS,
        "broker": _CLIENT_GROUPS | {_G.ROUTING},
        "agent": _CLIENT_GROUPS | {_G.AGENT_LINK},
        "dev": _SERVER_GROUPS | {_G.TLS_CLIENT},
        "a2a-bridge": _CLIENT_GROUPS | {_G.AGENT_LINK, _G.A2A_REMOTE},
        "token": frozenset({_G.AUTH, _G.LOGGING}),
        "bench": frozenset({_G.BUS, _G.LOGGING}),
    }
)


# A command whose default for a setting differs from Settings': `dev` runs on the in-process bus
# unless the flag or the environment (MESSAGE_BUS) says otherwise.
COMMAND_DEFAULTS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {"dev": MappingProxyType({"message_bus": "memory"})}
)


def flag_of(name: str) -> str:
    """The command-line flag of the setting `name` (`grpc_port` -> `--grpc-port`)."""
    return "--" + name.replace("_", "-")


def _add_settings_flags(parser: argparse.ArgumentParser, command: str) -> None:
    # The usage line shows the command's own arguments; its settings follow, one titled section
    # per group, in the same order for every command.
    own_usage = " ".join(parser.format_usage().removeprefix("usage: ").split())
    parser.usage = f"{own_usage} [settings]"
    groups = COMMAND_GROUPS[command]
    for group in SettingsGroup:
        if group not in groups:
            continue
        section = parser.add_argument_group(f"{group.key} settings", group.summary)
        for name in fields_in(group):
            choices = _choices_of(name)
            section.add_argument(
                flag_of(name),
                dest=SETTINGS_DEST + name,
                # The choices show in the usage; a value outside them is refused by Settings,
                # in the one line that names the variable, like a bad value from the environment.
                metavar="{" + ",".join(choices) + "}" if choices else name.upper(),
                default=None,
                help=_setting_help(name, command),
            )


def _choices_of(name: str) -> tuple[str, ...]:
    annotation = Settings.model_fields[name].annotation
    if typing.get_origin(annotation) is typing.Literal:
        return tuple(str(choice) for choice in typing.get_args(annotation))
    return ()


def _setting_help(name: str, command: str) -> str:
    """The setting's description and its default in this command."""
    field = Settings.model_fields[name]
    default = COMMAND_DEFAULTS.get(command, {}).get(name, field.default)
    if isinstance(default, bool):
        shown = "1" if default else "0"
    elif default == "":
        shown = "empty"
    else:
        shown = str(default)
    return f"{field.description} (default: {shown})"


def _settings_from(args: argparse.Namespace) -> Settings:
    overrides = {
        key.removeprefix(SETTINGS_DEST): value
        for key, value in vars(args).items()
        if key.startswith(SETTINGS_DEST) and value is not None
    }
    settings = load_settings(**overrides)
    # The command's own defaults apply where neither a flag nor the environment set a value.
    defaults = {
        name: value
        for name, value in COMMAND_DEFAULTS.get(args.command, {}).items()
        if name not in settings.model_fields_set
    }
    return settings.model_copy(update=defaults) if defaults else settings


class CommandLine(NamedTuple):
    """The `agentcomm` parser and, by command name, the parser of each command."""

    parser: argparse.ArgumentParser
    commands: Mapping[str, argparse.ArgumentParser]


def build_command_line() -> CommandLine:
    """The parsers of `agentcomm` and of each command, settings flags included."""
    from agentcomm.bench.scenarios import SCENARIO_NAMES
    from agentcomm.core.auth import Role
    from agentcomm.sdk.demo_agents import DEMO_KINDS

    parser = argparse.ArgumentParser(
        prog="agentcomm",
        description="A message hub for AI agents. `agentcomm dev` (what `make run` starts) runs "
        "the whole stack in one process.",
        epilog="`agentcomm COMMAND --help` lists the command's arguments and settings.",
    )
    parser.add_argument("--version", action="version", version=f"agentcomm {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands: dict[str, argparse.ArgumentParser] = {}

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        sub = subparsers.add_parser(
            name,
            help=summary,
            description=f"{summary}. Its settings, below, are also read from the environment "
            "(--log-level from LOG_LEVEL); a flag wins.",
        )
        commands[name] = sub
        return sub

    command("serve", "run the hub: WebSocket, HTTP and gRPC")

    broker = command("broker", "run the reference routing broker")
    broker.add_argument("--broker-id", default=None, help="broker id (default: broker_<hex>)")
    broker.add_argument(
        "--broker-name", default="reference-broker", help="display name (default: %(default)s)"
    )

    agent = command("agent", "run a demo agent built on the SDK")
    agent.add_argument("kind", choices=DEMO_KINDS, help="which demo agent")
    agent.add_argument("--name", default=None, help="agent name (default: the kind)")
    agent.add_argument("--id", dest="agent_id", default=None, help="agent id (default: the name)")
    agent.add_argument(
        "--transport",
        choices=["grpc", "amqp"],
        default=None,
        help="how work reaches the agent: grpc from the server, amqp from its RabbitMQ queue "
        "(default: amqp when MESSAGE_BUS=rabbitmq, else grpc; a hub on the in-process bus "
        "needs grpc)",
    )

    bridge = command("a2a-bridge", "put an outside A2A agent on the hub, as an agent")
    bridge.add_argument("url", help="the A2A agent's address (its card is at URL/.well-known/…)")
    bridge.add_argument(
        "--name", default=None, help="agent name and id on the hub (default: the card's name)"
    )
    bridge.add_argument(
        "--transport", choices=["grpc", "amqp"], default=None, help="as for `agentcomm agent`"
    )

    dev = command("dev", "server, broker, demo agents and web UI in one process")
    dev.add_argument(
        "--hubs",
        type=int,
        default=1,
        help="run this many hubs on RabbitMQ behind one small load balancer on --port "
        "(default: 1; more needs --message-bus rabbitmq)",
    )

    token = command("token", "mint a JWT for a frontend, agent, broker or admin")
    token.add_argument(
        "--role",
        required=True,
        choices=[role.value for role in Role],
        help="what the token may do: connect a frontend, register the agent --sub names, "
        "register a broker, or anything (admin: also the HTTP API and operator commands)",
    )
    token.add_argument(
        "--sub", required=True, help="who the token names (for agents: the agent id)"
    )
    token.add_argument(
        "--ttl", type=float, default=3600.0, help="seconds until it expires (default: %(default)g)"
    )

    bench = command("bench", "run a benchmark scenario")
    bench.add_argument(
        "scenario",
        choices=[*SCENARIO_NAMES, "all"],
        help="the scenario to run; 'all' runs each of them",
    )
    bench.add_argument(
        "--duration",
        type=float,
        default=10.0,
        help="seconds per measurement (default: %(default)g)",
    )
    bench.add_argument("--json", action="store_true", help="one JSON object per scenario")
    for name, sub in commands.items():
        _add_settings_flags(sub, name)
    return CommandLine(parser, MappingProxyType(commands))


def build_parser() -> argparse.ArgumentParser:
    """The `agentcomm` argument parser."""
    return build_command_line().parser


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parses `agentcomm` arguments; exits with status 2 and a usage line on a bad one.

    A flag of a setting the command does not read is refused by the command's own parser,
    with the commands that do read it.
    """
    parser, commands = build_command_line()
    arguments = sys.argv[1:] if argv is None else list(argv)
    if not arguments:
        # A first try with no arguments gets the overview, not an error about a missing command.
        parser.print_help()
        raise SystemExit(0)
    args, unknown = parser.parse_known_args(arguments)
    if unknown:
        commands[args.command].error(_unrecognized(args.command, unknown))
    return args


def _unrecognized(command: str, unknown: Sequence[str]) -> str:
    lines = [f"unrecognized arguments: {' '.join(unknown)}"]
    for word in unknown:
        flag = word.partition("=")[0]
        name = flag.removeprefix("--").replace("-", "_")
        if not flag.startswith("--") or name not in Settings.model_fields:
            continue
        readers = [other for other, groups in COMMAND_GROUPS.items() if group_of(name) in groups]
        lines.append(f"{flag} is a setting of {', '.join(readers)}; '{command}' does not read it")
    return "\n".join(lines)


def _run(coroutine_factory: Callable[[], Coroutine[Any, Any, int | None]]) -> int:
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            result = runner.run(coroutine_factory())
    except KeyboardInterrupt:
        return 130
    return result or 0


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed (it comes with uvicorn[standard]): its transports gather the
    small writes of one loop iteration (AMQP frames, WebSocket frames) into one system call,
    which is most of what the hub's processes spend their time on. Without it, asyncio's own.
    """
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(argv)
    try:
        settings = _settings_from(args)
    except SettingsError as exc:
        print(f"agentcomm: invalid setting: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings)
    # Off (and OpenTelemetry not imported) unless the OTEL_* variables ask for traces.
    tracing = start_tracing(f"agentcomm-{args.command}") if args.command != "token" else None
    try:
        return _command(args, settings)
    finally:
        if tracing is not None:
            tracing.shutdown()


def _command(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "serve":
        from agentcomm.server.lifecycle.serve import serve

        return _run(lambda: serve(settings))
    if args.command == "broker":
        from agentcomm.broker.runner import run_broker

        return _run(lambda: run_broker(settings, args.broker_id, args.broker_name))
    if args.command == "agent":
        from agentcomm.sdk.demo_agents import run_demo_agent

        return _run(
            lambda: run_demo_agent(
                args.kind,
                settings,
                name=args.name,
                agent_id=args.agent_id,
                transport=args.transport,
            )
        )
    if args.command == "a2a-bridge":
        from agentcomm.gateways.a2a.bridge import A2ABridge

        return _run(
            lambda: A2ABridge(args.url, settings, name=args.name, transport=args.transport).serve()
        )
    if args.command == "dev":
        if args.hubs != 1:
            from agentcomm.dev_cluster import run_dev_cluster

            return _run(lambda: run_dev_cluster(settings, args.hubs))
        from agentcomm.dev import run_dev

        return _run(lambda: run_dev(settings))
    if args.command == "token":
        return _token(settings, args.role, args.sub, args.ttl)
    if args.command == "bench":
        from agentcomm.bench.cli import run_bench

        return _run(lambda: run_bench(settings, args.scenario, args.duration, args.json))
    raise AssertionError(f"unhandled command {args.command!r}")


def _token(settings: Settings, role: str, subject: str, ttl: float) -> int:
    from agentcomm.core.auth import Authenticator, AuthError, Role, WeakSecret

    if not (ttl > 0 and math.isfinite(ttl)):
        print(
            f"agentcomm token: --ttl must be a number of seconds above 0; got {ttl:g}",
            file=sys.stderr,
        )
        return 2
    try:
        print(Authenticator(settings.auth_secret).mint(Role(role), subject, ttl))
    except (AuthError, WeakSecret) as exc:
        print(f"agentcomm token: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
