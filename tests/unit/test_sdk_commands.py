"""Operator commands: built-ins, the agent's own, unknown ones, failures and cancellation."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from agentcomm.sdk.commands import (
    EXIT_CANCELLED,
    EXIT_FAILED,
    EXIT_UNKNOWN,
    Command,
    CommandRunner,
)
from agentcomm.sdk.message import CommandHandler

WAIT = 5.0


class Controls:
    def __init__(self) -> None:
        self.paused = False
        self.cancelled: list[str] = []

    def summary(self) -> dict[str, Any]:
        return {"status": "PAUSED" if self.paused else "IDLE", "in_flight": 0}

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    def cancel_message(self, message_id: str) -> bool:
        if message_id == "busy":
            self.cancelled.append(message_id)
            return True
        return False


def runner(controls: Controls, handlers: dict[str, CommandHandler] | None = None) -> CommandRunner:
    return CommandRunner(controls, handlers or {})


async def run(command_runner: CommandRunner, command: Command) -> Any:
    async with asyncio.timeout(WAIT):
        return await command_runner.run(command)


async def test_status_is_a_json_summary() -> None:
    outcome = await run(runner(Controls()), Command("c1", "status"))
    assert outcome.success
    assert json.loads(outcome.output) == {"status": "IDLE", "in_flight": 0}
    assert outcome.exit_code == 0
    assert outcome.execution_time_ms >= 0


async def test_pause_resume_and_shutdown() -> None:
    controls = Controls()
    commands = runner(controls)
    assert (await run(commands, Command("c1", "pause"))).success
    assert controls.paused
    assert (await run(commands, Command("c2", "RESUME "))).success  # any case, trimmed
    assert not controls.paused
    shutdown = await run(commands, Command("c3", "shutdown"))
    assert (shutdown.output, shutdown.stop_after) == ("shutting down", True)


async def test_cancel_names_a_message_in_progress() -> None:
    controls = Controls()
    commands = runner(controls)
    assert (await run(commands, Command("c1", "cancel", content="busy"))).success
    missing = await run(commands, Command("c2", "cancel", content="idle"))
    assert not missing.success
    assert missing.exit_code == EXIT_FAILED
    assert controls.cancelled == ["busy"]


async def test_a_user_command_gets_content_and_parameters() -> None:
    async def reverse(content: str, parameters: dict[str, str]) -> str:
        return content[::-1] + parameters.get("suffix", "")

    outcome = await run(
        runner(Controls(), {"reverse": reverse}),
        Command("c1", "reverse", content="abc", parameters={"suffix": "!"}),
    )
    assert (outcome.success, outcome.output) == (True, "cba!")


async def test_an_unknown_command_lists_the_known_ones() -> None:
    outcome = await run(runner(Controls()), Command("c1", "dance"))
    assert not outcome.success
    assert outcome.exit_code == EXIT_UNKNOWN
    assert "status" in outcome.error_message
    assert "'dance'" in outcome.error_message


async def test_a_failing_command_reports_the_error() -> None:
    async def broken(content: str, parameters: dict[str, str]) -> str:
        raise ValueError("bad input")

    outcome = await run(runner(Controls(), {"broken": broken}), Command("c1", "broken"))
    assert not outcome.success
    assert outcome.error_message == "ValueError: bad input"
    assert outcome.exit_code == EXIT_FAILED


async def test_a_cancellation_stops_a_running_command() -> None:
    started = asyncio.Event()

    async def forever(content: str, parameters: dict[str, str]) -> str:
        started.set()
        await asyncio.Event().wait()
        return "never"

    commands = runner(Controls(), {"forever": forever})
    running = asyncio.create_task(commands.run(Command("c1", "forever")))
    async with asyncio.timeout(WAIT):
        await started.wait()
    stopper = await run(commands, Command("c1", "", is_cancellation=True))
    assert stopper.success
    async with asyncio.timeout(WAIT):
        outcome = await running
    assert not outcome.success
    assert outcome.exit_code == EXIT_CANCELLED


async def test_a_cancellation_can_name_a_message() -> None:
    controls = Controls()
    outcome = await run(
        runner(controls),
        Command("c9", "cancel", parameters={"message_id": "busy"}, is_cancellation=True),
    )
    assert outcome.success
    assert controls.cancelled == ["busy"]
