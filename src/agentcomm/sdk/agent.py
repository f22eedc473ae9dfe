"""The Agent: a message handler plus everything around it.

Two loops run while an agent is up, each reconnecting on its own with capped backoff:
- the control loop (gRPC): RegisterAgent, then heartbeats and the command stream until the link
  breaks; it re-registers after the server restarted;
- the work loop: messages from the chosen transport into the Dispatcher.

Stopping runs in a fixed order: stop taking messages, let those in progress finish (for at most
SHUTDOWN_TIMEOUT seconds, then give them back), stop the control loop, UnregisterAgent, close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import platform
import signal
import socket
import time
import uuid
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

from agentcomm import __version__
from agentcomm.bus import Bus
from agentcomm.config import Settings, load_settings
from agentcomm.core.auth import token_subject
from agentcomm.protocol.ids import is_valid_id
from agentcomm.sdk.backoff import Backoff
from agentcomm.sdk.commands import (
    BUILTIN_COMMANDS,
    Command,
    CommandRunner,
    normalize_command_name,
)
from agentcomm.sdk.dispatcher import Dispatcher
from agentcomm.sdk.errors import (
    AgentError,
    HubUnavailable,
    NotRegistered,
    RegistrationRefused,
)
from agentcomm.sdk.hub_client import GrpcHubClient, HubClient, Registration, RegistrationRequest
from agentcomm.sdk.message import AgentStatus, CommandHandler, MessageHandler
from agentcomm.sdk.transports import BusWork, GrpcWork, TransportName, WorkTransport

log = logging.getLogger(__name__)

HandlerT = TypeVar("HandlerT", bound=MessageHandler)
CommandT = TypeVar("CommandT", bound=CommandHandler)

# A status change is reported at once, but not more often than this, so that a busy agent
# flipping between IDLE and BUSY does not turn heartbeats into a flood.
MIN_HEARTBEAT_GAP = 1.0
# A link that stayed up this long counts as healthy: the next failure starts backoff afresh.
HEALTHY_LINK_SECONDS = 10.0
# After the drain timeout, how long aborted handlers and final calls may take.
FINAL_CALL_TIMEOUT = 5.0


def choose_transport(transport: str | None, settings: Settings, bus: Bus | None) -> TransportName:
    """amqp with a bus given or MESSAGE_BUS=rabbitmq, else grpc; an explicit choice wins."""
    if transport is None:
        return "amqp" if bus is not None or settings.message_bus == "rabbitmq" else "grpc"
    if transport == "grpc":
        if bus is not None:
            raise ValueError("bus= is only used with transport 'amqp'.")
        return "grpc"
    if transport == "amqp":
        if bus is None and settings.message_bus == "memory":
            raise ValueError(
                "transport 'amqp' with MESSAGE_BUS=memory needs the shared in-process bus "
                "passed as bus=...; a separate process must use transport 'grpc'."
            )
        return "amqp"
    raise ValueError(f"Unknown transport {transport!r}; use 'grpc' or 'amqp'.")


def grpc_target(settings: Settings) -> str:
    """Where to dial the server: GRPC_HOST:GRPC_PORT, loopback for a wildcard listen address
    (the same settings serve the server and its agents)."""
    host = settings.grpc_host
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    return f"{host}:{settings.grpc_port}"


class Agent:
    """An agent on the agentcomm hub.

    >>> agent = Agent("echo")
    >>> @agent.on_message
    ... async def handle(message: Message) -> str:
    ...     return f"echo: {message.text}"
    >>> agent.run()  # doctest: +SKIP

    A handler returns the whole reply, or is an async generator whose pieces are streamed to
    the sender. If it raises, the sender gets an ERROR and the message is not redelivered.

    Args:
        name: display name; also the agent id when neither `agent_id` nor a token names one
            and the name is a valid id (letters, digits, `_.:-`), else the server assigns one.
        agent_id: the id to register with.
        capabilities: free-form strings the broker may route on.
        settings: defaults to the environment (GRPC_HOST, GRPC_PORT, MESSAGE_BUS, ...).
        transport: "grpc" (work over the server's stream) or "amqp" (consume the bus queue);
            defaults to "amqp" when a bus is given or MESSAGE_BUS=rabbitmq, else "grpc".
        bus: a shared bus to consume from (the in-process bus of the dev stack); not closed
            by the agent.
        concurrency: handlers running at once.
        prefetch: messages taken from the queue at once (default 4 x concurrency), so that a
            CANCEL is not stuck behind messages waiting for a handler slot.
        auth_token: the JWT to present when the server has AUTH_SECRET set (default:
            AUTH_TOKEN); an agent token speaks for the agent id in its `sub`.
        hub: a HubClient to use instead of gRPC (tests, custom transports).
    """

    def __init__(
        self,
        name: str,
        *,
        agent_id: str | None = None,
        capabilities: dict[str, str] | None = None,
        settings: Settings | None = None,
        transport: str | None = None,
        bus: Bus | None = None,
        concurrency: int = 16,
        prefetch: int | None = None,
        version: str = __version__,
        auth_token: str | None = None,
        hub: HubClient | None = None,
    ) -> None:
        if not name:
            raise ValueError("An agent needs a name.")
        if agent_id and not is_valid_id(agent_id):
            raise ValueError(f"Invalid agent id {agent_id!r}: use 1-128 of A-Z a-z 0-9 _ . : -")
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1.")
        self.name = name
        self.settings = settings or load_settings()
        self.transport: TransportName = choose_transport(transport, self.settings, bus)
        self.capabilities = dict(capabilities or {})
        self.concurrency = concurrency
        self.prefetch = prefetch or concurrency * 4
        self.version = version
        self._auth_token = self.settings.auth_token if auth_token is None else auth_token
        # The id: as given, else the one the token speaks for, else the name when it is one.
        self._requested_id = (
            agent_id or token_subject(self._auth_token) or (name if is_valid_id(name) else "")
        )
        self._bus = bus
        self._hub_override = hub
        self._session = uuid.uuid4().hex
        self._handler: MessageHandler | None = None
        self._commands: dict[str, CommandHandler] = {}
        self._paused = False
        self._state: _Running | None = None

    # -- configuration -------------------------------------------------------------------

    def on_message(self, handler: HandlerT) -> HandlerT:
        """Decorator: the function that answers each message (one per agent)."""
        if self._handler is not None:
            raise RuntimeError("This agent already has a message handler.")
        self._handler = handler
        return handler

    def command(self, name: str) -> Callable[[CommandT], CommandT]:
        """Decorator: an operator command `name`, called with (content, parameters)."""
        key = normalize_command_name(name)
        if not key:
            raise ValueError("A command needs a name.")
        if key in BUILTIN_COMMANDS:
            raise ValueError(f"{key!r} is a built-in command.")

        def register(handler: CommandT) -> CommandT:
            self._commands[key] = handler
            return handler

        return register

    # -- state ---------------------------------------------------------------------------

    @property
    def id(self) -> str | None:
        """The id the server registered this agent under; None before the first registration."""
        return self._state.agent_id if self._state else None

    @property
    def status(self) -> AgentStatus:
        if self._paused:
            return AgentStatus.PAUSED
        if self._state and self._state.dispatcher.in_flight:
            return AgentStatus.BUSY
        return AgentStatus.IDLE

    @property
    def is_running(self) -> bool:
        return self._state is not None and not self._state.main.done()

    def pause(self) -> None:
        """Stop taking new messages: they are answered with an ERROR saying so."""
        self._paused = True
        self._status_changed()

    def resume(self) -> None:
        self._paused = False
        self._status_changed()

    def summary(self) -> dict[str, Any]:
        """What the `status` command reports."""
        state = self._state
        stats = state.dispatcher.stats if state else None
        return {
            "agent_id": self.id,
            "agent_name": self.name,
            "status": self.status.value,
            "transport": self.transport,
            "in_flight": state.dispatcher.in_flight if state else 0,
            "concurrency": self.concurrency,
            "handled": stats.handled if stats else 0,
            "failed": stats.failed if stats else 0,
            "cancelled": stats.cancelled if stats else 0,
            "refused": stats.refused if stats else 0,
            "uptime_s": round(time.monotonic() - state.started, 3) if state else 0.0,
            "commands": sorted(BUILTIN_COMMANDS | set(self._commands)),
        }

    def request_stop(self) -> None:
        """Asks the agent to stop; `wait_stopped()` returns once it has."""
        if self._state is not None:
            self._state.stop_requested.set()

    def cancel_message(self, message_id: str) -> bool:
        """Cancels the handler working on `message_id`, if any."""
        return self._state.dispatcher.cancel(message_id) if self._state else False

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Registers with the server and starts taking messages.

        Returns once registered; keeps retrying while the server cannot be reached. Raises
        RegistrationRefused when the server refuses the agent.
        """
        if self.is_running:
            raise RuntimeError("The agent is already running.")
        if self._handler is None:
            raise RuntimeError("The agent has no message handler: decorate one with @on_message.")
        state = self._state = self._new_state(self._handler)
        registered = asyncio.create_task(state.registered.wait())
        try:
            await asyncio.wait({state.main, registered}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            state.stop_requested.set()
            with contextlib.suppress(Exception):
                await asyncio.shield(state.main)  # its failure is logged by the task itself
            raise
        finally:
            registered.cancel()
        if not state.registered.is_set():
            await state.main  # it ended before registering: raise why

    async def stop(self) -> None:
        """Stops gracefully (see the module docs); idempotent. Re-raises a fatal error."""
        state = self._state
        if state is None:
            return
        state.stop_requested.set()
        await asyncio.shield(state.main)

    async def wait_stopped(self) -> None:
        """Returns once the agent stopped: stop(), a shutdown command, or a fatal error."""
        if self._state is not None:
            await asyncio.shield(self._state.main)

    async def serve(self, *, handle_signals: bool = True) -> None:
        """start(), then run until stopped; SIGINT/SIGTERM stop it (a second one kills)."""
        loop = asyncio.get_running_loop()
        installed = _install_stop_signals(loop, self.request_stop) if handle_signals else []
        try:
            await self.start()
            await self.wait_stopped()
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)
            await self.stop()

    def run(self) -> None:
        """Blocking: serve() in a new event loop until SIGINT/SIGTERM or a shutdown command."""
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(self.serve())

    async def __aenter__(self) -> Agent:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- internals -----------------------------------------------------------------------

    def _new_state(self, handler: MessageHandler) -> _Running:
        hub = self._hub_override or GrpcHubClient(
            grpc_target(self.settings), self._session, token=self._auth_token
        )
        work: WorkTransport
        if self.transport == "grpc":
            work = GrpcWork(hub, self.prefetch)
        elif self._bus is not None:
            work = BusWork(self._bus, self.prefetch, owns_bus=False)
        else:
            from agentcomm.bus.factory import create_bus

            work = BusWork(create_bus(self.settings), self.prefetch, owns_bus=True)
        dispatcher = Dispatcher(
            handler,
            work.publish,
            concurrency=self.concurrency,
            is_paused=lambda: self._paused,
            on_change=self._status_changed,
        )
        return _Running(self, hub, work, dispatcher, owns_hub=self._hub_override is None)

    def _status_changed(self) -> None:
        if self._state is not None:
            self._state.status_changed.set()

    def _registration_request(self, agent_id: str) -> RegistrationRequest:
        return RegistrationRequest(
            agent_id=agent_id,
            agent_name=self.name,
            version=self.version,
            capabilities=self.capabilities,
            hostname=socket.gethostname(),
            platform=platform.platform(),
        )


class _Running:
    """Everything that exists while an agent runs; made by start(), dropped at stop."""

    def __init__(
        self,
        agent: Agent,
        hub: HubClient,
        work: WorkTransport,
        dispatcher: Dispatcher,
        *,
        owns_hub: bool,
    ) -> None:
        self.agent = agent
        self.hub = hub
        self.work = work
        self.dispatcher = dispatcher
        self.owns_hub = owns_hub
        self.agent_id: str | None = None
        self.heartbeat_interval = float(agent.settings.heartbeat_interval)
        self.started = time.monotonic()
        self.registered = asyncio.Event()
        self.stop_requested = asyncio.Event()
        self.status_changed = asyncio.Event()
        self.reregister = asyncio.Event()
        self.commands = CommandRunner(agent, agent._commands)
        self.main = asyncio.create_task(self._main(), name=f"agent-{agent.name}")
        self.main.add_done_callback(self._log_failure)

    def _log_failure(self, task: asyncio.Task[None]) -> None:
        # Before the first registration, start() raises the error to its caller instead.
        if self.agent_id is not None and not task.cancelled() and task.exception() is not None:
            log.error("Agent %s stopped on an error", self.agent.name, exc_info=task.exception())

    async def _main(self) -> None:
        control = asyncio.create_task(self._control_loop(), name=f"agent-{self.agent.name}-control")
        work = asyncio.create_task(self._work_loop(), name=f"agent-{self.agent.name}-work")
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
                registration = await self.hub.register(
                    self.agent._registration_request(self.agent_id or self.agent._requested_id)
                )
            except RegistrationRefused as exc:
                if self.agent_id is None:
                    raise  # the first registration: tell the caller of start()
                log.error("The server refused to re-register %s: %s", self.agent_id, exc)
                await backoff.sleep()
                continue
            except AgentError as exc:
                log.warning("Agent %s cannot register yet: %s", self.agent.name, exc)
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
        if self.agent_id is not None and registration.agent_id != self.agent_id:
            log.warning("The server moved agent %s to id %s", self.agent_id, registration.agent_id)
        self.agent_id = registration.agent_id
        self.dispatcher.agent_id = registration.agent_id
        if registration.heartbeat_interval:
            self.heartbeat_interval = float(registration.heartbeat_interval)
        self.reregister.clear()
        self.registered.set()
        log.info(
            "Agent %s registered as %s (%s transport)",
            self.agent.name,
            self.agent_id,
            self.work.name,
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
            reported = self.agent.status
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
            if self.agent.status is not reported:
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
            "concurrency": str(self.agent.concurrency),
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
            self.agent.request_stop()

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
        deadline = loop.time() + self.agent.settings.shutdown_timeout
        self.dispatcher.close_intake()
        work.cancel()
        await asyncio.wait({work}, timeout=self.agent.settings.shutdown_timeout)
        aborted = await self.dispatcher.drain(max(0.0, deadline - loop.time()))
        if aborted:
            log.warning(
                "Agent %s gave %d unfinished messages back after %.1f s",
                self.agent.name,
                aborted,
                self.agent.settings.shutdown_timeout,
            )
        await asyncio.wait({work}, timeout=FINAL_CALL_TIMEOUT)
        control.cancel()
        await asyncio.wait({control}, timeout=FINAL_CALL_TIMEOUT)
        if self.agent_id is not None:
            try:
                async with asyncio.timeout(FINAL_CALL_TIMEOUT):
                    await self.hub.unregister(self.agent_id)
                log.info("Agent %s unregistered", self.agent_id)
            except (AgentError, TimeoutError) as exc:
                log.warning("Agent %s could not unregister: %s", self.agent_id, exc)
        await self.work.close()
        if self.owns_hub:
            await self.hub.close()


def _install_stop_signals(
    loop: asyncio.AbstractEventLoop, request_stop: Callable[[], None]
) -> list[signal.Signals]:
    """SIGINT/SIGTERM ask for a graceful stop; the handlers then step aside, so that a second
    Ctrl+C interrupts at once."""
    signums = [signal.SIGINT, signal.SIGTERM]

    def on_signal() -> None:
        for signum in signums:
            loop.remove_signal_handler(signum)
        request_stop()

    installed: list[signal.Signals] = []
    for signum in signums:
        try:
            loop.add_signal_handler(signum, on_signal)
        except (NotImplementedError, RuntimeError, ValueError):
            break  # not the main thread, or a platform without signal handlers in the loop
        installed.append(signum)
    return installed
