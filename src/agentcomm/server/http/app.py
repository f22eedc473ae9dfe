"""The ASGI application: HTTP API, the frontend WebSocket and the web UI, bound to one Hub."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import FastAPI, WebSocket
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from starlette.routing import Router
from starlette.types import ASGIApp

from agentcomm import __version__
from agentcomm.gateways.a2a.routes import GatewayFirst, build_a2a_routes
from agentcomm.server.http.api import build_api_router
from agentcomm.server.http.conversations import build_conversations_router
from agentcomm.server.http.guard import RequestGuard
from agentcomm.server.http.parts import HttpParts
from agentcomm.server.ws.connection import serve_frontend_socket
from agentcomm.server.ws.parts import FrontendParts

WEB_ROOT = Path(str(files("agentcomm.web") / "static"))


def _cors_options(origins: list[str]) -> dict[str, Any]:
    # An explicit allow-list only: never "*" together with credentials.
    return {
        "allow_origins": origins,
        "allow_credentials": True,
        "allow_methods": ["GET", "POST", "DELETE"],
        "allow_headers": ["Authorization", "Content-Type"],
    }


def create_app(parts: HttpParts, frontends: FrontendParts) -> ASGIApp:
    """The FastAPI application, with the A2A endpoints (`/a2a`) ahead of it: they go through
    the same guard (and CORS) but not through FastAPI's error, exception and routing layers,
    which took a tenth of the hub's time on each A2A call."""
    app = FastAPI(title="agentcomm", version=__version__, docs_url="/api/docs", redoc_url=None)
    app.state.parts = parts
    # Inside CORS (added after it, so outside it runs first): refusals carry CORS headers too.
    app.add_middleware(RequestGuard, parts=parts)
    origins = parts.settings.origins
    if origins:
        app.add_middleware(CORSMiddleware, **_cors_options(origins))
    app.include_router(build_conversations_router())
    app.include_router(build_api_router())

    @app.websocket("/ws")
    async def frontend_socket(websocket: WebSocket) -> None:
        # Served by `server.ws.asgi.FrontendSocketsFirst` ahead of FastAPI; this route is for an
        # application served without it.
        await serve_frontend_socket(frontends, websocket)

    if WEB_ROOT.is_dir():
        app.mount("/", StaticFiles(directory=WEB_ROOT, html=True), name="web")
    if parts.a2a is None:
        return app
    gateway: ASGIApp = RequestGuard(Router(routes=build_a2a_routes(parts.a2a)), parts=parts)
    if origins:
        gateway = CORSMiddleware(gateway, **_cors_options(origins))
    return GatewayFirst(app, gateway)
