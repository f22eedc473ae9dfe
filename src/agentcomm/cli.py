"""The `agentcomm` command: serve | broker | agent | dev | token | bench.

Every setting of `agentcomm.config.Settings` is also a flag (`--grpc-port 50052` mirrors
`GRPC_PORT=50052`); flags win over the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from agentcomm.config import Settings, SettingsError, load_settings
from agentcomm.logging_setup import configure_logging

SETTINGS_DEST = "settings__"


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("settings (each also read from the environment)")
    for name, field in Settings.model_fields.items():
        group.add_argument(
            "--" + name.replace("_", "-"),
            dest=SETTINGS_DEST + name,
            metavar=name.upper(),
            default=None,
            help=field.description,
        )


def _settings_from(args: argparse.Namespace, **forced: Any) -> Settings:
    overrides = {
        key.removeprefix(SETTINGS_DEST): value
        for key, value in vars(args).items()
        if key.startswith(SETTINGS_DEST) and value is not None
    }
    overrides.update({key: value for key, value in forced.items() if value is not None})
    return load_settings(**overrides)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentcomm", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the hub: WebSocket, HTTP and gRPC")
    _add_settings_flags(serve)

    broker = commands.add_parser("broker", help="run the reference routing broker")
    broker.add_argument("--broker-id", default=None, help="broker id (default: broker_<hex>)")
    broker.add_argument("--broker-name", default="reference-broker", help="display name")
    _add_settings_flags(broker)

    agent = commands.add_parser("agent", help="run a demo agent built on the SDK")
    agent.add_argument("kind", choices=["echo", "typist"], help="which demo agent")
    agent.add_argument("--name", default=None, help="agent name (default: the kind)")
    agent.add_argument("--id", dest="agent_id", default=None, help="agent id (default: the name)")
    agent.add_argument(
        "--transport",
        choices=["grpc", "amqp"],
        default=None,
        help="how work arrives (default: amqp on RabbitMQ, grpc otherwise)",
    )
    _add_settings_flags(agent)

    dev = commands.add_parser("dev", help="server, broker, demo agents and web UI in one process")
    dev.add_argument(
        "--bus", choices=["memory", "rabbitmq"], default="memory", help="message bus to run on"
    )
    _add_settings_flags(dev)

    token = commands.add_parser("token", help="mint a JWT for a frontend, agent, broker or admin")
    token.add_argument("--role", required=True, choices=["frontend", "agent", "broker", "admin"])
    token.add_argument(
        "--sub", required=True, help="who the token names (for agents: the agent id)"
    )
    token.add_argument("--ttl", type=float, default=3600.0, help="seconds until it expires")
    _add_settings_flags(token)

    bench = commands.add_parser("bench", help="run a benchmark scenario")
    bench.add_argument("scenario", help="scenario name, or 'all'")
    bench.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    bench.add_argument("--json", action="store_true", help="one JSON object per scenario")
    _add_settings_flags(bench)
    return parser


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
    args = build_parser().parse_args(argv)
    try:
        if args.command == "dev":
            settings = _settings_from(args, message_bus=args.bus)
        else:
            settings = _settings_from(args)
    except SettingsError as exc:
        print(f"agentcomm: invalid setting: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings)

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
    if args.command == "dev":
        from agentcomm.dev import run_dev

        return _run(lambda: run_dev(settings))
    if args.command == "token":
        from agentcomm.core.auth import Authenticator, AuthError, Role

        try:
            print(Authenticator(settings.auth_secret).mint(Role(args.role), args.sub, args.ttl))
        except AuthError as exc:
            print(f"agentcomm: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.command == "bench":
        from agentcomm.bench.cli import run_bench

        return _run(lambda: run_bench(settings, args.scenario, args.duration, args.json))
    raise AssertionError(f"unhandled command {args.command!r}")


if __name__ == "__main__":
    raise SystemExit(main())
