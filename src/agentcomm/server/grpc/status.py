"""AgentStatusService: the full agent list, then a delta on every change, for brokers.

The list goes a page at a time (`AGENT_PAGE_BYTES`, see protos/agent_status_service.proto): a
broker reads any number of agents without one response outgrowing its receive limit (gRPC's
default is 4 MiB, which 450 agents with large capabilities used to exceed: the broker then
routed with no agents at all). Pages are read from the registry as the stream takes them, and
so is a large delta.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable, Iterator

import grpc

from agentcomm.core.auth import Authenticator, Role
from agentcomm.core.brokers import BrokerRegistry
from agentcomm.core.presence_views import AGENT_PAGE_BYTES, AgentSource, take_page
from agentcomm.generated import agent_status_service_pb2 as pb
from agentcomm.generated import agent_status_service_pb2_grpc as pb_grpc
from agentcomm.protocol.ids import is_valid_id
from agentcomm.protocol.models import AgentInfo
from agentcomm.server.grpc.context import Context, authorize

log = logging.getLogger(__name__)

# Deltas queued for a subscriber that reads slowly; past this it gets one full list instead.
SUBSCRIBER_QUEUE_SIZE = 1000


def to_proto(info: AgentInfo) -> pb.AgentInfo:
    return pb.AgentInfo(
        agent_id=info.agent_id,
        agent_name=info.agent_name,
        is_online=info.is_online,
        last_seen=info.last_seen,
        status=info.status.value,
        capabilities=info.capabilities,
        in_flight=info.in_flight,
    )


class _Subscriber:
    """Deltas for one stream; when it falls behind, the backlog collapses into a full list."""

    def __init__(self) -> None:
        self.deltas: asyncio.Queue[list[AgentInfo]] = asyncio.Queue(SUBSCRIBER_QUEUE_SIZE)
        self.needs_full = False
        self.wakeup = asyncio.Event()

    def push(self, delta: list[AgentInfo]) -> None:
        try:
            self.deltas.put_nowait(delta)
        except asyncio.QueueFull:
            self.needs_full = True
        self.wakeup.set()


async def _check_broker_id(broker_id: str, context: Context) -> None:
    # Empty is allowed: the described system's brokers may not name themselves.
    if broker_id and not is_valid_id(broker_id):
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            "broker_id must be empty or 1-128 characters from [A-Za-z0-9_.:-].",
        )


class AgentStatusServicer(pb_grpc.AgentStatusServiceServicer):
    def __init__(self, auth: Authenticator, registry: AgentSource, brokers: BrokerRegistry) -> None:
        self._auth = auth
        self._registry = registry
        self._brokers = brokers

    async def SubscribeToAgentStatus(
        self, request: pb.AgentStatusRequest, context: Context
    ) -> AsyncIterator[pb.AgentStatusResponse]:
        await authorize(self._auth, context, Role.BROKER)
        await _check_broker_id(request.broker_id, context)
        broker_id = request.broker_id or context.peer()
        subscriber = _Subscriber()
        unsubscribe = self._registry.subscribe(subscriber.push)
        self._brokers.stream_opened(broker_id)
        try:
            for page in self._full_pages():
                yield page
            while True:
                await subscriber.wakeup.wait()
                subscriber.wakeup.clear()
                if subscriber.needs_full:
                    subscriber.needs_full = False
                    while not subscriber.deltas.empty():
                        subscriber.deltas.get_nowait()
                    for page in self._full_pages():
                        yield page
                    continue
                while not subscriber.deltas.empty():
                    delta = subscriber.deltas.get_nowait()
                    for agents in _paged(to_proto(info) for info in delta):
                        yield pb.AgentStatusResponse(agents=agents, is_full_update=False)
        finally:
            unsubscribe()
            self._brokers.stream_closed(broker_id)

    async def GetAgentStatus(
        self, request: pb.AgentStatusRequest, context: Context
    ) -> pb.AgentStatusResponse:
        await authorize(self._auth, context, Role.BROKER)
        await _check_broker_id(request.broker_id, context)
        after = request.after_agent_id or None
        if after is not None and len(after) > 128:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "after_agent_id may have at most 128 characters."
            )
        return self._page(after)

    def _full_pages(self) -> Iterator[pb.AgentStatusResponse]:
        """The full list, each page read from the registry when the one before was taken."""
        after: str | None = None
        while True:
            page = self._page(after)
            yield page
            if not page.more_pages:
                return
            after = page.agents[-1].agent_id

    def _page(self, after: str | None) -> pb.AgentStatusResponse:
        agents, more = take_page(
            (to_proto(info) for info in self._registry.infos_after(after)), _proto_size
        )
        return pb.AgentStatusResponse(agents=agents, is_full_update=after is None, more_pages=more)


def _proto_size(info: pb.AgentInfo) -> int:
    return info.ByteSize()


def _paged(infos: Iterable[pb.AgentInfo]) -> Iterator[list[pb.AgentInfo]]:
    """A delta in pages (one page but for a sweep of many agents)."""
    page: list[pb.AgentInfo] = []
    size = 0
    for info in infos:
        info_size = info.ByteSize()
        if page and size + info_size > AGENT_PAGE_BYTES:
            yield page
            page, size = [], 0
        page.append(info)
        size += info_size
    if page:
        yield page
