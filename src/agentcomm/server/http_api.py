"""HTTP endpoints (PROTOCOL §7): health, readiness, metrics, agents and operator commands."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from pydantic import BaseModel, Field

from agentcomm.core.auth import AuthError, Role, bearer_token
from agentcomm.core.errors import AgentOffline, CommandTimedOut, UnknownAgent
from agentcomm.protocol.ids import is_valid_id
from agentcomm.protocol.models import MAX_MAP_ENTRIES, AgentInfo
from agentcomm.protocol.vocabulary import AgentState

if TYPE_CHECKING:
    from agentcomm.server.hub import Hub

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


def hub_of(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


async def require_admin(request: Request) -> None:
    """With AUTH_SECRET set, the API takes only `Authorization: Bearer <admin token>`."""
    auth = hub_of(request).auth
    if not auth.enabled:
        return
    try:
        principal = auth.verify(bearer_token(request.headers.get("authorization")))
    except AuthError as exc:
        raise HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from None
    if principal.role is not Role.ADMIN:
        raise HTTPException(403, "The API needs an admin token.")


def build_api_router() -> APIRouter:
    router = APIRouter()
    api = APIRouter(prefix="/api", dependencies=[Depends(require_admin)])

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz")
    async def readyz(request: Request, response: Response) -> dict[str, Any]:
        hub = hub_of(request)
        checks = {
            "bus": hub.bus.is_connected,
            "grpc": hub.grpc_server is not None and not hub.draining,
            "accepting": not hub.draining,
        }
        ready = all(checks.values()) and hub.ready
        if not ready:
            response.status_code = 503
        return {"status": "ready" if ready else "not ready", **checks}

    @router.get("/metrics")
    async def metrics(request: Request) -> Response:
        return Response(hub_of(request).metrics.render(), media_type="text/plain; version=0.0.4")

    @api.get("/agents")
    async def list_agents(request: Request) -> list[AgentInfo]:
        return hub_of(request).registry.snapshot()

    @api.get("/brokers")
    async def list_brokers(request: Request) -> list[dict[str, object]]:
        return [record.as_json() for record in hub_of(request).brokers.all()]

    @api.post("/agents/{agent_id}/commands")
    async def send_command(
        agent_id: str, body: CommandRequest, request: Request
    ) -> CommandResultBody:
        hub = hub_of(request)
        if not is_valid_id(agent_id):
            raise HTTPException(422, "agent_id must be 1-128 characters from [A-Za-z0-9_.:-].")
        try:
            outcome = await hub.commands.execute(
                agent_id,
                body.type,
                body.content,
                body.parameters,
                timeout=body.timeout_s or hub.settings.command_timeout,
            )
        except UnknownAgent as exc:
            raise HTTPException(404, str(exc)) from None
        except AgentOffline as exc:
            raise HTTPException(409, str(exc)) from None
        except CommandTimedOut as exc:
            raise HTTPException(504, str(exc)) from None
        state = _STATE_AFTER_COMMAND.get(body.type.lower())
        if outcome.success and state is not None and hub.registry.is_online(agent_id):
            hub.registry.set_reported_state(agent_id, state)
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
