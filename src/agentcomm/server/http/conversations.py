"""Conversation history over HTTP (docs/history.md): a user's conversations and their messages.

With AUTH_SECRET set, a frontend token reads and deletes its own user's conversations (the
token's `sub`), an admin token any user's (`?user_id=` picks one); another user's conversation
is 404, as one that does not exist. An open hub trusts `?user_id=` as it trusts everything
(without it, every user's).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse

from agentcomm.core.auth import AuthError, Role, bearer_token
from agentcomm.history.records import (
    AmbiguousConversation,
    ConversationNotFound,
    ConversationSummary,
    StoreUnavailable,
    Unrecoverable,
)
from agentcomm.history.store import ConversationStore
from agentcomm.protocol.timestamps import from_epoch, to_iso
from agentcomm.server.http.parts import HttpParts

PREFIX = "/api/conversations"
MAX_PAGE = 1000


def is_conversations_path(path: str) -> bool:
    """These paths check their tokens themselves: frontend tokens may use them."""
    return path == PREFIX or path.startswith(PREFIX + "/")


def _iso(seconds: float) -> str:
    return to_iso(from_epoch(seconds))


def _parts(request: Request) -> HttpParts:
    parts: HttpParts = request.app.state.parts
    return parts


def _store(parts: HttpParts) -> ConversationStore:
    if parts.history is None:
        raise HTTPException(404, "History is off on this hub (HISTORY_URL=none).")
    return parts.history


def _reader(request: Request, parts: HttpParts) -> str | None:
    """The user whose conversations the caller may see (None: any user's)."""
    asked = request.query_params.get("user_id") or None
    if not parts.auth.enabled:
        return asked
    try:
        principal = parts.auth.verify(bearer_token(request.headers.get("authorization")))
    except AuthError as exc:
        raise HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from None
    if principal.role is Role.ADMIN:
        return asked
    if principal.role is Role.FRONTEND:
        return principal.subject
    raise HTTPException(403, "Conversations are read with a frontend or an admin token.")


def _summary(item: ConversationSummary) -> dict[str, Any]:
    return {
        "conversation_id": item.conversation_id,
        "user_id": item.user_id,
        "created_at": _iso(item.created_at),
        "updated_at": _iso(item.updated_at),
        "first_seq": item.first_seq,
        "last_seq": item.last_seq,
    }


def unrecoverable_body(exc: Unrecoverable) -> dict[str, Any]:
    return {"error_code": "unrecoverable", "detail": str(exc), "first_seq": exc.first_seq}


def build_conversations_router() -> APIRouter:
    router = APIRouter(prefix=PREFIX)

    @router.get("")
    async def list_conversations(
        request: Request,
        limit: int = Query(50, ge=1, le=MAX_PAGE),
        before: str | None = Query(None, max_length=1024),
    ) -> dict[str, Any]:
        """The caller's conversations, newest activity first; `next_cursor` as `before` for
        the next page."""
        parts = _parts(request)
        user, store = _reader(request, parts), _store(parts)
        try:
            page = await store.conversations(user, limit=limit, before=before)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        except StoreUnavailable as exc:
            raise HTTPException(503, str(exc)) from None
        return {
            "conversations": [_summary(item) for item in page.conversations],
            "next_cursor": page.next_cursor,
        }

    @router.get("/{conversation_id}/messages", response_model=None)
    async def list_messages(
        request: Request,
        conversation_id: str,
        after: int = Query(0, ge=0),
        limit: int = Query(100, ge=1, le=MAX_PAGE),
    ) -> dict[str, Any] | JSONResponse:
        """Messages with seq above `after`, in seq order; 410 when retention removed some."""
        parts = _parts(request)
        user, store = _reader(request, parts), _store(parts)
        try:
            page = await store.messages(user, conversation_id, after=after, limit=limit)
        except Unrecoverable as exc:
            return JSONResponse(unrecoverable_body(exc), status_code=410)
        except ConversationNotFound as exc:
            raise HTTPException(404, str(exc)) from None
        except AmbiguousConversation as exc:
            raise HTTPException(409, str(exc)) from None
        except StoreUnavailable as exc:
            raise HTTPException(503, str(exc)) from None
        return {
            "conversation_id": page.conversation_id,
            "messages": [item.as_json() for item in page.messages],
            "first_seq": page.first_seq,
            "last_seq": page.last_seq,
        }

    @router.delete("/{conversation_id}", status_code=204)
    async def delete_conversation(request: Request, conversation_id: str) -> Response:
        parts = _parts(request)
        user, store = _reader(request, parts), _store(parts)
        try:
            await store.delete(user, conversation_id)
        except ConversationNotFound as exc:
            raise HTTPException(404, str(exc)) from None
        except AmbiguousConversation as exc:
            raise HTTPException(409, str(exc)) from None
        except StoreUnavailable as exc:
            raise HTTPException(503, str(exc)) from None
        return Response(status_code=204)

    return router
