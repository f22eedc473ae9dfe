"""Operator commands (the ReceiveCommands stream): the built-ins and the agent's own.

Built-ins: `status` (a JSON summary), `pause`, `resume`, `shutdown`, and `cancel` (content = the
id of a message in progress). A Command with `is_cancellation` cancels the running command with
the same `command_id`, or else the message whose id is in `parameters["message_id"]` or
`content`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from agentcomm.sdk.message import CommandHandler

log = logging.getLogger(__name__)

BUILTIN_COMMANDS = frozenset({"status", "pause", "resume", "shutdown", "cancel"})

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_UNKNOWN = 2
# The shell's convention for "stopped by a signal", used for cancelled commands.
EXIT_CANCELLED = 130


@dataclass(frozen=True, slots=True)
class Command:
    """One command from an operator, as the server sends it."""

    command_id: str
    type: str
    content: str = ""
    parameters: Mapping[str, str] = field(default_factory=dict)
    is_cancellation: bool = False


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    """What goes back in SendCommandResult."""

    success: bool
    output: str = ""
    error_message: str = ""
    exit_code: int = EXIT_OK
    execution_time_ms: int = 0
    # Set by `shutdown`: the agent stops once this result has been sent.
    stop_after: bool = False


class AgentControls(Protocol):
    """What the built-in commands act on."""

    def summary(self) -> dict[str, Any]: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def cancel_message(self, message_id: str) -> bool: ...


def normalize_command_name(name: str) -> str:
    return name.strip().lower()


class CommandRunner:
    """Runs one command at a time per call; several calls may run concurrently."""

    def __init__(self, controls: AgentControls, handlers: Mapping[str, CommandHandler]) -> None:
        self._controls = controls
        self._handlers = handlers
        self._running: dict[str, asyncio.Task[str]] = {}

    async def run(self, command: Command) -> CommandOutcome:
        started = time.monotonic()
        outcome = await self._outcome(command)
        elapsed_ms = int((time.monotonic() - started) * 1000)
        return CommandOutcome(
            success=outcome.success,
            output=outcome.output,
            error_message=outcome.error_message,
            exit_code=outcome.exit_code,
            execution_time_ms=elapsed_ms,
            stop_after=outcome.stop_after,
        )

    async def _outcome(self, command: Command) -> CommandOutcome:
        if command.is_cancellation:
            return self._cancel(command)
        name = normalize_command_name(command.type)
        controls = self._controls
        if name == "status":
            return CommandOutcome(True, json.dumps(controls.summary(), sort_keys=True))
        if name == "pause":
            controls.pause()
            return CommandOutcome(True, "paused")
        if name == "resume":
            controls.resume()
            return CommandOutcome(True, "resumed")
        if name == "shutdown":
            return CommandOutcome(True, "shutting down", stop_after=True)
        if name == "cancel":
            message_id = command.content.strip() or command.parameters.get("message_id", "")
            if controls.cancel_message(message_id):
                return CommandOutcome(True, f"cancelled message {message_id}")
            return CommandOutcome(
                False,
                error_message=f"No message {message_id!r} in progress.",
                exit_code=EXIT_FAILED,
            )
        handler = self._handlers.get(name)
        if handler is None:
            known = ", ".join(sorted(BUILTIN_COMMANDS | set(self._handlers)))
            return CommandOutcome(
                False,
                error_message=f"Unknown command {command.type!r}; this agent knows: {known}.",
                exit_code=EXIT_UNKNOWN,
            )
        return await self._run_handler(command, handler)

    async def _run_handler(self, command: Command, handler: CommandHandler) -> CommandOutcome:
        # Its own task, so that a cancellation command can stop it without stopping us.
        async def call() -> str:
            return await handler(command.content, dict(command.parameters))

        task = asyncio.create_task(call(), name=f"command-{command.type}-{command.command_id}")
        self._running[command.command_id] = task
        try:
            output = await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            return CommandOutcome(False, error_message="cancelled", exit_code=EXIT_CANCELLED)
        except Exception as exc:
            log.exception("Command %s (%s) failed", command.command_id, command.type)
            return CommandOutcome(
                False, error_message=f"{type(exc).__name__}: {exc}", exit_code=EXIT_FAILED
            )
        finally:
            self._running.pop(command.command_id, None)
        if not isinstance(output, str):
            return CommandOutcome(
                False,
                error_message=f"The command handler returned {type(output).__name__}, not str.",
                exit_code=EXIT_FAILED,
            )
        return CommandOutcome(True, output)

    def _cancel(self, command: Command) -> CommandOutcome:
        task = self._running.get(command.command_id)
        if task is not None and not task.done():
            task.cancel()
            return CommandOutcome(True, f"cancelled command {command.command_id}")
        message_id = command.parameters.get("message_id") or command.content.strip()
        if message_id and self._controls.cancel_message(message_id):
            return CommandOutcome(True, f"cancelled message {message_id}")
        return CommandOutcome(
            False, error_message="Nothing to cancel: no such command or message in progress."
        )
