"""What every scenario gets: settings, options, the progress bar and a place for logs."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentcomm.bench.options import BenchOptions
from agentcomm.bench.progress import Progress
from agentcomm.config import Settings

Result = dict[str, Any]


@dataclass
class BenchContext:
    settings: Settings
    options: BenchOptions
    progress: Progress
    log_dir: Path


def machine() -> dict[str, Any]:
    """The facts about the machine that the numbers depend on."""
    import os

    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }
    # Others' work on the machine while measuring: the numbers are only as good as this.
    info["load_average_1m"] = round(os.getloadavg()[0], 2)
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info
