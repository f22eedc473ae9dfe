"""HTTP endpoints (PROTOCOL §7): health, readiness, metrics, agents and operator commands."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from pydantic import BaseModel, Field

from agentcomm.config import Settings
from agentcomm.core.auth import Authenticator, AuthError, Role, bearer_token
from agentcomm.core.errors import AgentOffline, CommandTimedOut, UnknownAgent
from agentcomm.protocol.ids import is_valid_id
from agentcomm.protocol.models import MAX_MAP_ENTRIES, AgentInfo
from agentcomm.protocol.vocabulary import AgentState
from agentcomm.server.http.conversations import is_conversations_path
from agentcomm.server.http.parts import HttpParts

MAX_COMMAND_TIMEOUT_SECONDS = 600.0

# Built-in commands whose success changes what frontends should see at once.
_STATE_AFTER_COMMAND = {"pause": AgentState.PAUSED, "resume": AgentState.ONLINE}


class CommandRequest(BaseModel):
    type: str = Field(min_length=1, max_length=64)
    content: str = Field(default="", max_length=65536)
    parameters: dict[str, str] = Field(default_factory=dict, max_length=MAX_MAP_ENTRIES)
    timeout_s: float | None = Field(default=None, gt=0, le=MAX_COMMAND_TIMEOUT_SECONDS)


class CommandResultBody(BaseModel):
    command_id: str
    agent_id: str
    success: bool
    output: str
    error_message: str
    exit_code: int
    execution_time_ms: int


def parts_of(request: Request) -> HttpParts:
    parts: HttpParts = request.app.state.parts
    return parts


def is_protected(path: str, settings: Settings) -> bool:
    """Whether `path` takes only an admin token (when AUTH_SECRET is set): the API, and the
    metrics unless METRICS_PUBLIC."""
    if is_conversations_path(path):
        return False  # frontend tokens read their own user's; the routes check
    if path == "/api" or path.startswith("/api/"):
        return True
    return path == "/metrics" and not settings.metrics_public


def admin_refusal(auth: Authenticator, authorization: str | None) -> tuple[int, str] | None:
    """The status and sentence that refuse an `Authorization` header on a protected path
    (None: it may pass)."""
    if not auth.enabled:
        return None
    try:
        principal = auth.verify(bearer_token(authorization))
    except AuthError as exc:
        return 401, str(exc)
    if principal.role is not Role.ADMIN:
        return 403, "The API needs an admin token."
    return None


def caller_refusal(auth: Authenticator, authorization: str | None) -> tuple[int, str] | None:
    """The same for the A2A endpoints, which take a frontend token as well as an admin one."""
    if not auth.enabled:
        return None
    try:
        principal = auth.verify(bearer_token(authorization))
    except AuthError as exc:
        return 401, str(exc)
    if principal.role not in (Role.FRONTEND, Role.ADMIN):
        return 403, f"A {principal.role.value} token cannot call agents; use a frontend token."
    return None


async def require_admin(request: Request) -> None:
    """With AUTH_SECRET set, the API takes only `Authorization: Bearer <admin token>`."""
    parts = parts_of(request)
    if not is_protected(request.url.path, parts.settings):
        return
    refusal = admin_refusal(parts.auth, request.headers.get("authorization"))
    if refusal is not None:
        status, detail = refusal
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        raise HTTPException(status, detail, headers=headers)


def build_api_router() -> APIRouter:
    router = APIRouter()
    api = APIRouter(prefix="/api", dependencies=[Depends(require_admin)])

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz")
    async def readyz(request: Request, response: Response) -> dict[str, Any]:
        parts = parts_of(request)
        checks = parts.readiness()
        ready = all(checks.values()) and parts.is_ready()
        if not ready:
            response.status_code = 503
        # History is a detail, not a check: without it chat goes on.
        return {
            "status": "ready" if ready else "not ready",
            **checks,
            "history": parts.history_status(),
        }

    @router.get("/metrics", dependencies=[Depends(require_admin)])
    async def metrics(request: Request) -> Response:
        return Response(parts_of(request).metrics.render(), media_type="text/plain; version=0.0.4")

    @api.get("/agents")
    async def list_agents(request: Request) -> list[AgentInfo]:
        return parts_of(request).agents.snapshot()

    @api.get("/brokers")
    async def list_brokers(request: Request) -> list[dict[str, object]]:
        return [record.as_json() for record in parts_of(request).brokers.all()]

    @api.get("/hubs")
    async def list_hubs(request: Request) -> list[dict[str, object]]:
        """This hub and every other hub of the cluster it hears from."""
        return parts_of(request).hubs()

    @api.post("/agents/{agent_id}/commands")
    async def send_command(
        agent_id: str, body: CommandRequest, request: Request
    ) -> CommandResultBody:
        parts = parts_of(request)
        if not is_valid_id(agent_id):
            raise HTTPException(422, "agent_id must be 1-128 characters from [A-Za-z0-9_.:-].")
        try:
            outcome = await parts.commands.execute(
                agent_id,
                body.type,
                body.content,
                body.parameters,
                timeout=body.timeout_s or parts.settings.command_timeout,
            )
        except UnknownAgent as exc:
            raise HTTPException(404, str(exc)) from None
        except AgentOffline as exc:
            raise HTTPException(409, str(exc)) from None
        except CommandTimedOut as exc:
            raise HTTPException(504, str(exc)) from None
        state = _STATE_AFTER_COMMAND.get(body.type.lower())
        if outcome.success and state is not None and parts.registry.is_online(agent_id):
            parts.registry.set_reported_state(agent_id, state)
        return CommandResultBody(
            command_id=outcome.command_id,
            agent_id=outcome.agent_id,
            success=outcome.success,
            output=outcome.output,
            error_message=outcome.error_message,
            exit_code=outcome.exit_code,
            execution_time_ms=outcome.execution_time_ms,
        )

    router.include_router(api)
    return router
