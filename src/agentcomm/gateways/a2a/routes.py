"""The A2A endpoints of the hub's HTTP app.

- `GET /a2a` (also `/a2a/.well-known/agent-card.json`): the hub's own card, its agents as
  skills; `POST /a2a`: a message for whichever agent the hub's broker chooses.
- `GET /a2a/{agent_id}/.well-known/agent-card.json`: that agent's card (404: no such agent).
- `POST /a2a/{agent_id}`: A2A JSON-RPC, spec 1.0 (`A2A-Version: 1.0`) and 0.3 on one URL.

With AUTH_SECRET set, every one of them takes `Authorization: Bearer <token>` of role
frontend or admin; the HTTP guard (`server/http/guard.py`) refuses others before a body is
read, and each task belongs to the token's subject.
"""

from __future__ import annotations

from typing import Any

from a2a.server.context import ServerCallContext
from a2a.server.request_handlers.response_helpers import agent_card_to_dict
from a2a.server.routes.common import DefaultServerCallContextBuilder
from a2a.server.routes.jsonrpc_dispatcher import JsonRpcDispatcher
from a2a.types import AgentCard
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from agentcomm.core.auth import AuthError, bearer_token
from agentcomm.gateways.a2a.cards import agent_card, hub_card
from agentcomm.gateways.a2a.gateway import A2AGateway
from agentcomm.gateways.a2a.handler import AGENT_ID, CALLER, HubRequestHandler
from agentcomm.protocol.ids import is_valid_id

PREFIX = "/a2a"
# JSON-RPC's "Parse error".
PARSE_ERROR = -32700
CARD_PATH = "/.well-known/agent-card.json"


def is_gateway_path(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


class _CallContexts(DefaultServerCallContextBuilder):
    """a2a-sdk's call context, plus the agent the URL names and the caller the token names."""

    def __init__(self, gateway: A2AGateway) -> None:
        self._gateway = gateway

    def build(self, request: Request) -> ServerCallContext:
        context = super().build(request)
        context.state[AGENT_ID] = request.path_params.get("agent_id", "")
        context.state[CALLER] = _caller(self._gateway, request)
        return context


def _caller(gateway: A2AGateway, request: Request) -> str:
    """Whose tasks these are: the token's subject (one caller for all on an open hub)."""
    auth = gateway.parts.auth
    if not auth.enabled:
        return ""
    try:
        return auth.verify(bearer_token(request.headers.get("authorization"))).subject
    except AuthError:
        return ""  # refused by the guard before it came here; never anybody's tasks


def _base_url(gateway: A2AGateway, request: Request) -> str:
    public = gateway.parts.settings.public_url
    base = public.rstrip("/") if public else str(request.base_url).rstrip("/")
    return base + PREFIX


def _card_response(card: AgentCard) -> Response:
    # a2a-sdk's own rendering: the 1.0 card with the 0.3 fields beside it, for clients of both.
    return JSONResponse(agent_card_to_dict(card))


class GatewayFirst:
    """`/a2a` requests to `gateway` (the gateway's routes, guarded), everything else to `app`."""

    def __init__(self, app: ASGIApp, gateway: ASGIApp) -> None:
        self._app = app
        self._gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and is_gateway_path(scope["path"]):
            await self._gateway(scope, receive, send)
        else:
            await self._app(scope, receive, send)


def build_a2a_routes(gateway: A2AGateway) -> list[BaseRoute]:
    dispatcher = JsonRpcDispatcher(
        request_handler=HubRequestHandler(gateway),
        context_builder=_CallContexts(gateway),
        enable_v0_3_compat=True,
    )
    auth_enabled = gateway.parts.auth.enabled

    async def hub(request: Request) -> Response:
        agents = gateway.parts.agents.snapshot()
        return _card_response(
            hub_card(agents, _base_url(gateway, request), auth_enabled=auth_enabled)
        )

    async def agent(request: Request) -> Response:
        agent_id: str = request.path_params["agent_id"]
        info = gateway.parts.agents.info(agent_id) if is_valid_id(agent_id) else None
        if info is None:
            return JSONResponse(
                {"detail": f"There is no agent {agent_id!r} on this hub; GET /a2a lists them."},
                status_code=404,
            )
        url = f"{_base_url(gateway, request)}/{agent_id}"
        return _card_response(agent_card(info, url, auth_enabled=auth_enabled))

    async def rpc(request: Request) -> Response:
        agent_id: Any = request.path_params.get("agent_id", "")
        if agent_id and not is_valid_id(agent_id):
            return JSONResponse({"detail": "An agent id is 1-128 of A-Z a-z 0-9 _ . : -"}, 404)
        try:
            # a2a-sdk takes a body that is not UTF-8 for a failure of its own (-32603).
            (await request.body()).decode()
        except UnicodeDecodeError:
            error = {"code": PARSE_ERROR, "message": "The body is not UTF-8 JSON."}
            return JSONResponse({"jsonrpc": "2.0", "id": None, "error": error})
        return await dispatcher.handle_requests(request)

    return [
        Route(PREFIX, hub, methods=["GET"]),
        Route(PREFIX + CARD_PATH, hub, methods=["GET"]),
        Route(PREFIX, rpc, methods=["POST"]),
        Route(PREFIX + "/{agent_id}" + CARD_PATH, agent, methods=["GET"]),
        Route(PREFIX + "/{agent_id}", rpc, methods=["POST"]),
    ]
