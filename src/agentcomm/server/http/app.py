"""The ASGI application: HTTP API, the frontend WebSocket and the web UI, bound to one Hub."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, WebSocket
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from agentcomm import __version__
from agentcomm.gateways.a2a.routes import GatewayFirst, build_a2a_routes
from agentcomm.server.http.api import build_api_router
from agentcomm.server.http.guard import RequestGuard
from agentcomm.server.http.parts import HttpParts
from agentcomm.server.ws.connection import serve_frontend_socket
from agentcomm.server.ws.parts import FrontendParts

WEB_ROOT = Path(str(files("agentcomm.web") / "static"))


def create_app(parts: HttpParts, frontends: FrontendParts) -> FastAPI:
    app = FastAPI(title="agentcomm", version=__version__, docs_url="/api/docs", redoc_url=None)
    app.state.parts = parts
    if parts.a2a is not None:
        # Added first, so that it runs inside the guard (and CORS): /a2a is answered by the
        # gateway's own routes without FastAPI's exception and routing layers, which cost
        # about a third of an A2A round trip's time in the hub.
        app.add_middleware(GatewayFirst, routes=build_a2a_routes(parts.a2a))
    # Inside CORS (added after it, so outside it runs first): refusals carry CORS headers too.
    app.add_middleware(RequestGuard, parts=parts)
    origins = parts.settings.origins
    if origins:
        # An explicit allow-list only: never "*" together with credentials.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_credentials=True,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.include_router(build_api_router())

    @app.websocket("/ws")
    async def frontend_socket(websocket: WebSocket) -> None:
        # Served by `server.ws.asgi.FrontendSocketsFirst` ahead of FastAPI; this route is for an
        # application served without it.
        await serve_frontend_socket(frontends, websocket)

    if WEB_ROOT.is_dir():
        app.mount("/", StaticFiles(directory=WEB_ROOT, html=True), name="web")
    return app
