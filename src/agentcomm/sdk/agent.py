"""The Agent: a message handler, its commands and settings; `runtime.py` runs it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import platform
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
from agentcomm.grpc_channel import ClientTls
from agentcomm.logging_setup import configure_logging_unless_configured
from agentcomm.protocol import Envelope
from agentcomm.protocol.ids import is_valid_id
from agentcomm.sdk.calls import DEFAULT_MAX_CALLS_IN_FLIGHT, AsksOtherAgents, Calls
from agentcomm.sdk.commands import (
    BUILTIN_COMMANDS,
    CommandRunner,
    normalize_command_name,
)
from agentcomm.sdk.dispatcher import Dispatcher
from agentcomm.sdk.errors import AgentError
from agentcomm.sdk.hub_client import GrpcHubClient, HubClient, RegistrationRequest
from agentcomm.sdk.message import AgentStatus, CommandHandler, MessageHandler
from agentcomm.sdk.runtime import AgentRuntime
from agentcomm.sdk.transports import (
    BusWork,
    GrpcWork,
    TransportName,
    WorkTransport,
    choose_transport,
)
from agentcomm.signals import Waiting, counted, stop_on_signals
from agentcomm.telemetry import start_tracing, tracing_for

log = logging.getLogger(__name__)

HandlerT = TypeVar("HandlerT", bound=MessageHandler)
CommandT = TypeVar("CommandT", bound=CommandHandler)


def replies_waiting(in_flight: int, seconds: float) -> Waiting | None:
    """What an agent's stop waits for: its replies in progress (None: none)."""
    if not in_flight:
        return None
    return Waiting(seconds, counted(in_flight, "reply in progress", "replies in progress"))


def grpc_target(settings: Settings) -> str:
    """Where to dial the server: GRPC_HOST:GRPC_PORT, loopback for a wildcard listen address
    (the same settings serve the server and its agents)."""
    host = settings.grpc_host
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    return f"{host}:{settings.grpc_port}"


class Agent(AsksOtherAgents):
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
            defaults to "amqp" when a bus is given or MESSAGE_BUS=rabbitmq, else "grpc". The
            server refuses a transport that cannot reach its bus (amqp beside a hub on the
            in-process bus) when the agent registers.
        bus: a shared bus to consume from (the in-process bus of the dev stack, when the
            transport is called "memory"); not closed by the agent.
        concurrency: handlers running at once.
        prefetch: messages taken from the queue at once (default 4 x concurrency), so that a
            CANCEL is not stuck behind messages waiting for a handler slot.
        auth_token: the JWT to present when the server has AUTH_SECRET set (default:
            AUTH_TOKEN); an agent token speaks for the agent id in its `sub`.
        hub: a HubClient to use instead of gRPC (tests, custom transports).
        stream_merge_ms: None (default): one REPLY_CHUNK per piece yielded. A number: pieces
            yielded while a chunk is on its way join the next one, which also waits that long
            for more (0: none); see docs/agents.md.
        max_calls_in_flight: calls to other agents (`ask`) unanswered at once, at most.
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
        stream_merge_ms: float | None = None,
        max_calls_in_flight: int = DEFAULT_MAX_CALLS_IN_FLIGHT,
    ) -> None:
        if not name:
            raise ValueError("An agent needs a name.")
        if agent_id and not is_valid_id(agent_id):
            raise ValueError(f"Invalid agent id {agent_id!r}: use 1-128 of A-Z a-z 0-9 _ . : -")
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1.")
        if stream_merge_ms is not None and not 0 <= stream_merge_ms <= 1000:
            raise ValueError("stream_merge_ms must be between 0 and 1000 (or None: no merging).")
        self.name = name
        self.stream_merge_ms = stream_merge_ms
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
        self._state: AgentRuntime | None = None
        # How to stop the agent, said when it registers: set while serve() owns the signals.
        self._stop_hint = ""
        self.calls = Calls(
            self._publish_call,
            lambda: self.id,
            limit=max_calls_in_flight,
            timeout=self.settings.answer_timeout,
        )

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
    def in_flight(self) -> int:
        """Messages being handled now."""
        return self._state.dispatcher.in_flight if self._state else 0

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
            "in_flight": self.in_flight,
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
        """start(), then run until stopped; SIGINT/SIGTERM stop it (a second one kills).

        Logs through the process's logging, set up as the hub's (`logging_setup`) unless the
        program set up its own: registered where and how, how to stop, and stopped.
        """
        configure_logging_unless_configured(self.settings)
        signals = (
            stop_on_signals(self.request_stop, self._waiting)
            if handle_signals
            else contextlib.nullcontext(False)
        )
        with signals as handled:
            self._stop_hint = "Ctrl+C stops it" if handled else ""
            try:
                await self.start()
                await self.wait_stopped()
            finally:
                await self.stop()
                self._stop_hint = ""

    def run(self) -> None:
        """Blocking: serve() in a new event loop until SIGINT/SIGTERM or a shutdown command.

        An agent the server refuses (its id is taken, its transport cannot reach the hub's
        bus), or that finds its queue missing on its bus, ends the program with one sentence
        saying why and exit status 1, not a traceback.

        With the `OTEL_*` variables set, the agent exports its spans (the handler's, under
        which the author's own spans nest) to their OTLP endpoint.
        """
        tracing = start_tracing(f"agentcomm-agent-{self.name}")
        try:
            asyncio.run(self.serve())
        except KeyboardInterrupt:
            pass
        except AgentError as exc:
            # Once registered, the agent has said itself why it stopped.
            if self.id is None:
                log.error("The hub refused agent %s: %s", self.name, exc)
            raise SystemExit(1) from None
        finally:
            if tracing is not None:
                tracing.shutdown()

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

    def _new_state(self, handler: MessageHandler) -> AgentRuntime:
        hub = self._hub_override or GrpcHubClient(
            grpc_target(self.settings),
            self._session,
            token=self._auth_token,
            tls=ClientTls.from_settings(self.settings),
            max_message_bytes=self.settings.max_message_bytes,
        )
        tracing = tracing_for("agentcomm.sdk")
        work: WorkTransport
        if self.transport == "grpc":
            work = GrpcWork(hub, self.prefetch, tracing)
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
            tracing=tracing,
            merge_seconds=None if self.stream_merge_ms is None else self.stream_merge_ms / 1000,
            calls=self.calls,
        )
        return AgentRuntime(
            name=self.name,
            settings=self.settings,
            hub=hub,
            work=work,
            dispatcher=dispatcher,
            commands=CommandRunner(self, self._commands),
            registration=self._registration_request,
            status=lambda: self.status,
            owns_hub=self._hub_override is None,
            hub_address=(
                grpc_target(self.settings)
                if self._hub_override is None
                else type(self._hub_override).__name__
            ),
            stop_hint=self._stop_hint,
        )

    async def _publish_call(self, envelope: Envelope) -> None:
        if self._state is None or self._state.main.done():
            raise AgentError("The agent is not running: start it before it asks other agents.")
        await self._state.work.publish(envelope)

    def _waiting(self) -> Waiting | None:
        """What stopping now waits for: the messages being handled, for SHUTDOWN_TIMEOUT."""
        return replies_waiting(self.in_flight, self.settings.shutdown_timeout)

    def _status_changed(self) -> None:
        if self._state is not None:
            self._state.status_changed.set()

    def _registration_request(self, agent_id: str | None) -> RegistrationRequest:
        """What to register with: the id held (after a reconnect), else the one asked for."""
        return RegistrationRequest(
            agent_id=agent_id or self._requested_id,
            agent_name=self.name,
            version=self.version,
            capabilities=self.capabilities,
            hostname=socket.gethostname(),
            platform=platform.platform(),
            transport=self.transport,
        )
