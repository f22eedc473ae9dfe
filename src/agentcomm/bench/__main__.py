"""`python -m agentcomm.bench SCENARIO` with every knob as a flag (settings from the
environment, as for `agentcomm bench`)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from collections.abc import Sequence

from agentcomm.bench.options import BenchOptions, options_from_env, parse_option
from agentcomm.bench.scenarios import SCENARIO_NAMES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m agentcomm.bench", description="agentcomm benchmarks"
    )
    parser.add_argument("scenario", help=f"{', '.join(SCENARIO_NAMES)} or all")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--json", action="store_true", help="one JSON object per scenario")
    defaults = BenchOptions()
    for item in dataclasses.fields(BenchOptions):
        if item.name in {"duration", "as_json", "notes"}:
            continue
        default = getattr(defaults, item.name)
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        parser.add_argument(
            "--" + item.name.replace("_", "-"),
            dest=item.name,
            default=None,
            help=f"default {shown}; also AGENTCOMM_BENCH_{item.name.upper()}",
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from agentcomm.bench.cli import run_with_options
    from agentcomm.config import SettingsError, load_settings
    from agentcomm.logging_setup import configure_logging

    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        options = options_from_env(args.duration, args.json)
        for item in dataclasses.fields(BenchOptions):
            raw = getattr(args, item.name, None)
            if raw is not None:
                setattr(options, item.name, parse_option(item.type, raw))
        settings = load_settings()
    except (ValueError, SettingsError) as exc:
        print(f"agentcomm bench: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings)
    try:
        return asyncio.run(run_with_options(settings, args.scenario, options))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
