"""Outside A2A agents written with a2a-sdk's server side, served by uvicorn on a free port."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import uvicorn
from a2a.helpers.proto_helpers import new_text_message
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes.agent_card_routes import create_agent_card_routes
from a2a.server.routes.jsonrpc_routes import create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
    Part,
    Task,
    TaskState,
    TaskStatus,
)
from starlette.applications import Starlette

from tests.support.waiting import wait_until

STREAM_PAUSE = 0.02


@dataclass
class Behaviour:
    """What the remote agent does with a message; `cancelled` records CancelTask calls."""

    kind: str  # echo | stream | slow | fail
    cancelled: list[str] = field(default_factory=list)
    contexts: list[str] = field(default_factory=list)


class Executor(AgentExecutor):
    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        text = context.get_user_input()
        self.behaviour.contexts.append(context.context_id or "")
        kind = self.behaviour.kind
        if kind == "echo":
            await event_queue.enqueue_event(new_text_message(f"remote echo: {text}"))
            return
        assert context.task_id is not None
        assert context.context_id is not None
        await event_queue.enqueue_event(
            Task(
                id=context.task_id,
                context_id=context.context_id,
                status=TaskStatus(state=TaskState.TASK_STATE_SUBMITTED),
            )
        )
        updater = TaskUpdater(event_queue, context.task_id, context.context_id)
        await updater.start_work()
        if kind == "fail":
            await updater.failed(new_text_message("out of coffee"))
        elif kind == "slow":
            await asyncio.sleep(60)
            await updater.complete()
        else:
            for index, word in enumerate(text.split()):
                await asyncio.sleep(STREAM_PAUSE)
                await updater.add_artifact(
                    [Part(text=f"<{word}>")], artifact_id="answer", append=index > 0
                )
            await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        self.behaviour.cancelled.append(context.task_id or "")
        assert context.task_id is not None
        assert context.context_id is not None
        await TaskUpdater(event_queue, context.task_id, context.context_id).cancel()


@dataclass
class RemoteAgent:
    url: str
    behaviour: Behaviour
    server: uvicorn.Server

    async def stop(self) -> None:
        self.server.should_exit = True


@asynccontextmanager
async def remote_agent(name: str, kind: str, *, streaming: bool) -> AsyncIterator[RemoteAgent]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    card = AgentCard(
        name=name,
        description=f"A {kind} agent written with a2a-sdk.",
        supported_interfaces=[
            AgentInterface(url=url, protocol_binding="JSONRPC", protocol_version="1.0")
        ],
        version="1.0.0",
        capabilities=AgentCapabilities(streaming=streaming),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[AgentSkill(id=kind, name=f"{kind} things", description=kind, tags=[kind])],
    )
    behaviour = Behaviour(kind)
    handler = DefaultRequestHandler(
        agent_executor=Executor(behaviour), task_store=InMemoryTaskStore(), agent_card=card
    )
    app = Starlette(
        routes=[*create_agent_card_routes(card), *create_jsonrpc_routes(handler, rpc_url="/")]
    )
    server = uvicorn.Server(
        uvicorn.Config(app, lifespan="off", log_level="warning", timeout_graceful_shutdown=1)
    )
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await wait_until(lambda: server.started, timeout=10, what="the remote A2A agent")
        yield RemoteAgent(url, behaviour, server)
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            async with asyncio.timeout(10):
                await serving
        sock.close()


async def _serve_until_signalled(kind: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with remote_agent(f"Remote {kind}", kind, streaming=kind in ("stream", "slow")) as agent:
        print(agent.url, flush=True)
        await stop.wait()


if __name__ == "__main__":
    # `python -m tests.support.a2a_remote KIND`: prints its URL, serves until SIGINT/SIGTERM.
    asyncio.run(_serve_until_signalled(sys.argv[1]))
