"""Optional py-spy sampling of the measured processes during the saturation phase.

With AGENTCOMM_BENCH_PROFILE=1 (or --profile 1) and py-spy installed, each Python process of
the hub and of the floor is sampled while it is measured, and its collapsed stacks are written
to <results>/profiles/<side>-<process>.txt; `top_functions` turns one into a short list of
where the time went (self time and inclusive time per function).
AGENTCOMM_BENCH_PROFILE_NATIVE=1 adds C and Cython frames (py-spy --native).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return str(beside)
    return shutil.which("py-spy")


@contextlib.asynccontextmanager
async def sampled(
    processes: dict[str, int], seconds: float, folder: Path, prefix: str
) -> AsyncIterator[list[Path]]:
    """Samples `processes` for `seconds` while the body runs; yields the files to be."""
    executable = py_spy()
    native = bool(os.environ.get("AGENTCOMM_BENCH_PROFILE_NATIVE"))
    outputs: list[Path] = []
    spies: list[asyncio.subprocess.Process] = []
    if executable is not None:
        os.makedirs(folder, exist_ok=True)
        for name, pid in processes.items():
            if name == "rabbitmq":
                continue
            path = folder / f"{prefix}-{name}.txt"
            spies.append(
                await asyncio.create_subprocess_exec(
                    executable,
                    "record",
                    "--pid",
                    str(pid),
                    "--duration",
                    str(math.ceil(seconds)),
                    "--rate",
                    "200",
                    # Native frames need the process paused while it is sampled.
                    *(["--native"] if native else ["--nonblocking"]),
                    "--format",
                    "raw",
                    "--output",
                    str(path),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL,
                )
            )
            outputs.append(path)
    try:
        yield outputs
    finally:
        for spy in spies:
            try:
                async with asyncio.timeout(seconds + 15):
                    await spy.wait()
            except TimeoutError:
                spy.kill()
                await spy.wait()


def top_functions(path: Path, count: int = 15) -> list[tuple[str, float, float]]:
    """(function, self share, inclusive share) of the samples in a collapsed-stack file."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if not stack or not number.isdigit():
            continue
        samples = int(number)
        frames = stack.split(";")
        total += samples
        own[_short(frames[-1])] += samples
        for frame in {_short(frame) for frame in frames}:
            inclusive[frame] += samples
    if total == 0:
        return []
    return [
        (name, own[name] / total, inclusive[name] / total) for name, _ in own.most_common(count)
    ]


def _short(frame: str) -> str:
    # "function (path/to/module.py:123)" -> "function (module.py)"
    name, _, where = frame.partition(" (")
    module = where.rsplit("/", 1)[-1].split(":", 1)[0].rstrip(")")
    return f"{name} ({module})" if module else name


def main(argv: list[str] | None = None) -> int:
    for name in argv if argv is not None else sys.argv[1:]:
        print(f"== {name}")
        for function, self_share, inclusive_share in top_functions(Path(name)):
            print(f"{self_share * 100:5.1f}% self {inclusive_share * 100:5.1f}% incl  {function}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
