"""What runs while an agent is up, each part reconnecting on its own with capped backoff:

- the control loop (gRPC): RegisterAgent, then heartbeats and the command stream until the link
  breaks; it registers again after the server restarted;
- the work loop: messages from the chosen transport into the Dispatcher.

Stopping runs in a fixed order: stop taking messages, let those in progress finish (for at most
SHUTDOWN_TIMEOUT seconds, then give them back), stop the control loop, UnregisterAgent, close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from agentcomm.config import Settings
from agentcomm.sdk.backoff import Backoff
from agentcomm.sdk.commands import Command, CommandRunner
from agentcomm.sdk.dispatcher import Dispatcher
from agentcomm.sdk.errors import (
    AgentError,
    HubUnavailable,
    NotRegistered,
    RegistrationRefused,
)
from agentcomm.sdk.hub_client import HubClient, Registration, RegistrationRequest
from agentcomm.sdk.message import AgentStatus
from agentcomm.sdk.transports import WorkTransport

log = logging.getLogger(__name__)

# A status change is reported at once, but not more often than this, so that a busy agent
# flipping between IDLE and BUSY does not turn heartbeats into a flood.
MIN_HEARTBEAT_GAP = 1.0
# A link that stayed up this long counts as healthy: the next failure starts backoff afresh.
HEALTHY_LINK_SECONDS = 10.0
# After the drain timeout, how long aborted handlers and final calls may take.
FINAL_CALL_TIMEOUT = 5.0
# How each transport brings an agent its work, for the line that says it registered.
_ARRIVES = {
    "grpc": "its messages come over gRPC",
    "amqp": "it takes its messages from RabbitMQ",
    "memory": "it takes its messages from the hub's in-process bus",
}


class AgentRuntime:
    """Everything that exists while an agent runs: made by Agent.start(), done at stop.

    `main` is the one task that owns the loops; it ends once the agent has stopped, with the
    error that stopped it, if any.
    """

    def __init__(
        self,
        *,
        name: str,
        settings: Settings,
        hub: HubClient,
        work: WorkTransport,
        dispatcher: Dispatcher,
        commands: CommandRunner,
        registration: Callable[[str | None], RegistrationRequest],
        status: Callable[[], AgentStatus],
        owns_hub: bool,
        hub_address: str = "",
        stop_hint: str = "",
    ) -> None:
        self.name = name
        self.settings = settings
        self.hub = hub
        self.work = work
        self.dispatcher = dispatcher
        self.commands = commands
        self._registration = registration
        self._status = status
        self.owns_hub = owns_hub
        # Where the hub is and how to stop the agent, for the lines that say it registered.
        self.hub_address = hub_address
        self.stop_hint = stop_hint
        self.agent_id: str | None = None
        self.heartbeat_interval = float(settings.heartbeat_interval)
        self.started = time.monotonic()
        self.registered = asyncio.Event()
        self.stop_requested = asyncio.Event()
        self.status_changed = asyncio.Event()
        self.reregister = asyncio.Event()
        self.main = asyncio.create_task(self._main(), name=f"agent-{name}")
        self.main.add_done_callback(self._log_end)

    def _log_end(self, task: asyncio.Task[None]) -> None:
        # Before the first registration, start() raises the error to its caller instead.
        if self.agent_id is None:
            return
        failure = None if task.cancelled() else task.exception()
        if failure is None:
            log.info("Agent %s stopped", self.name)
        elif isinstance(failure, AgentError):
            # Says what to change in a sentence of its own; a traceback would only bury it.
            log.error("Agent %s stopped: %s", self.name, failure)
        else:
            log.error("Agent %s stopped on an error", self.name, exc_info=failure)

    async def _main(self) -> None:
        control = asyncio.create_task(self._control_loop(), name=f"agent-{self.name}-control")
        work = asyncio.create_task(self._work_loop(), name=f"agent-{self.name}-work")
        stop = asyncio.create_task(self.stop_requested.wait())
        try:
            # The loops only return by raising something retrying cannot fix.
            await asyncio.wait({control, work, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            await self._shutdown(control, work)
        failures = [t.exception() for t in (control, work) if t.done() and not t.cancelled()]
        for failure in failures:
            if failure is not None:
                raise failure

    # -- control: registration, heartbeats, commands ---------------------------------------

    async def _control_loop(self) -> None:
        backoff = Backoff()
        loop = asyncio.get_running_loop()
        while True:
            try:
                registration = await self.hub.register(self._registration(self.agent_id))
            except RegistrationRefused as exc:
                if self.agent_id is None:
                    raise  # the first registration: tell the caller of start()
                log.error("The server refused to re-register %s: %s", self.agent_id, exc)
                await backoff.sleep()
                continue
            except AgentError as exc:
                log.warning("Agent %s cannot register yet: %s", self.name, exc)
                await backoff.sleep()
                continue
            self._registered(registration)
            began = loop.time()
            lost = await self._session(registration.agent_id)
            self.registered.clear()
            if loop.time() - began >= HEALTHY_LINK_SECONDS:
                backoff.reset()
            log.warning("Agent %s lost the server (%s); reconnecting", self.agent_id, lost)
            await backoff.sleep()

    def _registered(self, registration: Registration) -> None:
        again = self.agent_id is not None
        if again and registration.agent_id != self.agent_id:
            log.warning("The server moved agent %s to id %s", self.agent_id, registration.agent_id)
        self.agent_id = registration.agent_id
        self.dispatcher.agent_id = registration.agent_id
        if registration.heartbeat_interval:
            self.heartbeat_interval = float(registration.heartbeat_interval)
        self.reregister.clear()
        self.registered.set()
        bus = f", whose bus is {registration.message_bus}" if registration.message_bus else ""
        log.info(
            "Agent %s registered%s as %s with the hub at %s%s; %s (transport %s)%s",
            self.name,
            " again" if again else "",
            self.agent_id,
            self.hub_address,
            bus,
            _ARRIVES.get(self.work.name, "its messages come"),
            self.work.name,
            f". {self.stop_hint}." if self.stop_hint and not again else "",
        )

    async def _session(self, agent_id: str) -> AgentError:
        """Heartbeats and commands until the link breaks; returns what broke it."""
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._heartbeats(agent_id))
                group.create_task(self._commands(agent_id, group))
                group.create_task(self._watch_reregister())
        except ExceptionGroup as failures:
            lost, unexpected = failures.split(AgentError)
            if unexpected is not None or lost is None:
                raise
            first = lost.exceptions[0]
            assert isinstance(first, AgentError)  # the group's tasks are not nested groups
            return first
        raise AssertionError("a control session ended without an error")

    async def _watch_reregister(self) -> None:
        await self.reregister.wait()
        raise NotRegistered("The server no longer knows this agent.")

    async def _heartbeats(self, agent_id: str) -> None:
        loop = asyncio.get_running_loop()
        while True:
            reported = self._status()
            interval = await self.hub.heartbeat(agent_id, reported.value, self._metrics())
            if interval:
                self.heartbeat_interval = float(interval)
            await self._until_next_beat(loop.time(), reported)

    async def _until_next_beat(self, sent_at: float, reported: AgentStatus) -> None:
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            due = sent_at + self.heartbeat_interval
            if now >= due:
                return
            if self._status() is not reported:
                early = sent_at + MIN_HEARTBEAT_GAP
                if now >= early:
                    return
                await asyncio.sleep(min(due, early) - now)
                continue
            self.status_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.status_changed.wait(), due - now)

    def _metrics(self) -> dict[str, str]:
        stats = self.dispatcher.stats
        return {
            "in_flight": str(self.dispatcher.in_flight),
            "concurrency": str(self.dispatcher.concurrency),
            "handled": str(stats.handled),
            "failed": str(stats.failed),
        }

    async def _commands(self, agent_id: str, group: asyncio.TaskGroup) -> None:
        stream = self.hub.commands(agent_id)
        async with contextlib.aclosing(stream):
            async for command in stream:
                group.create_task(
                    self._run_command(agent_id, command), name=f"command-{command.command_id}"
                )
        raise HubUnavailable("The server closed the command stream.")

    async def _run_command(self, agent_id: str, command: Command) -> None:
        outcome = await self.commands.run(command)
        try:
            await self.hub.send_command_result(agent_id, command.command_id, outcome)
        except AgentError as exc:
            # The server times the command out on its side; the session itself is fine.
            log.warning("Could not return the result of command %s: %s", command.command_id, exc)
        if outcome.stop_after:
            # Only now: stopping ends this session, and the result must reach the operator.
            log.info("Agent %s stopping: an operator sent the shutdown command", self.name)
            self.stop_requested.set()

    # -- work ------------------------------------------------------------------------------

    async def _work_loop(self) -> None:
        backoff = Backoff()
        loop = asyncio.get_running_loop()
        await self.registered.wait()
        while True:
            if self.work.needs_registration:
                await self.registered.wait()
            agent_id = self.agent_id
            assert agent_id is not None  # set before `registered`
            began = loop.time()
            try:
                await self.work.receive(agent_id, self.dispatcher.handle)
            except NotRegistered as exc:
                log.warning("Agent %s must register again: %s", agent_id, exc)
                self.registered.clear()
                self.reregister.set()
            except HubUnavailable as exc:
                log.warning("Agent %s lost its %s link: %s", agent_id, self.work.name, exc)
            if loop.time() - began >= HEALTHY_LINK_SECONDS:
                backoff.reset()
            await backoff.sleep()

    # -- stopping --------------------------------------------------------------------------

    async def _shutdown(self, control: asyncio.Task[None], work: asyncio.Task[None]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.shutdown_timeout
        self.dispatcher.close_intake()
        work.cancel()
        await asyncio.wait({work}, timeout=self.settings.shutdown_timeout)
        aborted = await self.dispatcher.drain(max(0.0, deadline - loop.time()))
        if aborted:
            log.warning(
                "Agent %s gave %d unfinished messages back after %.1f s",
                self.name,
                aborted,
                self.settings.shutdown_timeout,
            )
        await asyncio.wait({work}, timeout=FINAL_CALL_TIMEOUT)
        if self.dispatcher.calls is not None:
            # The CANCELs for the calls of aborted handlers go out before the link closes.
            await self.dispatcher.calls.settle(FINAL_CALL_TIMEOUT)
        control.cancel()
        await asyncio.wait({control}, timeout=FINAL_CALL_TIMEOUT)
        if self.agent_id is not None:
            try:
                async with asyncio.timeout(FINAL_CALL_TIMEOUT):
                    await self.hub.unregister(self.agent_id)
                log.info(
                    "Agent %s unregistered from the hub at %s", self.agent_id, self.hub_address
                )
            except (AgentError, TimeoutError) as exc:
                log.warning("Agent %s could not unregister: %s", self.agent_id, exc)
        await self.work.close()
        if self.owns_hub:
            await self.hub.close()
