"""Which RabbitMQ vhost a run uses.

RABBITMQ_VHOST given explicitly (environment or flag) is used as it is. Otherwise the harness
makes a private vhost with `rabbitmqctl` when it can and deletes it afterwards, so that a run
never shares the fixed queue names (broker_input_queue, ...) with anything else on the same
RabbitMQ; without `rabbitmqctl` it falls back to the configured vhost and says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import uuid
from collections.abc import AsyncIterator

from agentcomm.config import Settings

_RABBITMQCTL_TIMEOUT = 60.0


def vhost_given_explicitly(settings: Settings) -> bool:
    if settings.rabbitmq_vhost != "/":
        return True
    if any(key.upper() == "RABBITMQ_VHOST" for key in os.environ):
        return True
    return any(arg.startswith("--rabbitmq-vhost") for arg in sys.argv)


async def _rabbitmqctl(*args: str) -> bool:
    executable = shutil.which("rabbitmqctl")
    if executable is None:
        return False
    process = await asyncio.create_subprocess_exec(
        executable,
        "-q",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with asyncio.timeout(_RABBITMQCTL_TIMEOUT):
            return await process.wait() == 0
    except TimeoutError:
        process.kill()
        await process.wait()
        return False


@contextlib.asynccontextmanager
async def bench_vhost(settings: Settings, notes: list[str]) -> AsyncIterator[Settings]:
    """Settings pointing at the vhost to measure in; a private one is deleted on exit."""
    if vhost_given_explicitly(settings) or settings.rabbitmq_host not in (
        "localhost",
        "127.0.0.1",
        "::1",
    ):
        yield settings
        return
    name = f"agentcomm_bench_{uuid.uuid4().hex[:10]}"
    created = await _rabbitmqctl("add_vhost", name) and await _rabbitmqctl(
        "set_permissions", "-p", name, settings.rabbitmq_user, ".*", ".*", ".*"
    )
    if not created:
        await _rabbitmqctl("delete_vhost", name)
        notes.append(
            f"could not create a private vhost with rabbitmqctl; measuring in vhost "
            f"{settings.rabbitmq_vhost!r}"
        )
        yield settings
        return
    try:
        yield settings.model_copy(update={"rabbitmq_vhost": name})
    finally:
        await asyncio.shield(_rabbitmqctl("delete_vhost", name))
