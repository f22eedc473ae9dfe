"""The ASGI application the hub serves: `/ws` straight to the frontend connection, everything
else to the FastAPI application.

FastAPI's routing, dependency and exception layers keep their frames and exit stacks alive for
as long as a request runs, which for a WebSocket is as long as the socket is open: several
kilobytes per idle frontend, for nothing the socket uses.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from agentcomm.server.ws.connection import serve_frontend_socket
from agentcomm.server.ws.parts import FrontendParts

FRONTEND_SOCKET_PATH = "/ws"


class FrontendSocketsFirst:
    def __init__(self, app: ASGIApp, parts: FrontendParts) -> None:
        self._app = app
        self._parts = parts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"] == FRONTEND_SOCKET_PATH:
            await serve_frontend_socket(self._parts, WebSocket(scope, receive, send))
        else:
            await self._app(scope, receive, send)
