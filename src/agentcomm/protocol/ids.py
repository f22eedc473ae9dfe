"""Identifier formats (PROTOCOL §1) and their generators."""

from __future__ import annotations

import os
import re
import uuid

ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
_ID_RE = re.compile(ID_PATTERN)

FRONTEND_PREFIX = "web_"


def is_valid_id(value: str) -> bool:
    return bool(_ID_RE.match(value))


def new_message_id() -> str:
    # 32 random hex digits, the format of a uuid4's hex, at a tenth of its cost: every reply
    # and every status an agent or the server makes takes one.
    return os.urandom(16).hex()


# A frontend id starts with the tag of the server holding its socket, so that any server can
# tell where a message for it must go without asking anyone.
SERVER_TAG_CHARS = 8


def new_frontend_id(server_tag: str = "") -> str:
    """`web_` + 32 hex characters, the first ones being `server_tag` when given."""
    return FRONTEND_PREFIX + (server_tag + uuid.uuid4().hex)[:32]


def server_tag(server_id: str) -> str:
    """The short tag of a server, as frontend ids and per-server queue names carry it."""
    return server_id.removeprefix("server_")[:SERVER_TAG_CHARS]


def frontend_server_tag(frontend_id: str) -> str:
    """The tag of the server that registered a frontend id."""
    return frontend_id.removeprefix(FRONTEND_PREFIX)[:SERVER_TAG_CHARS]


def new_agent_id() -> str:
    return "agent_" + uuid.uuid4().hex


def new_broker_id() -> str:
    return "broker_" + uuid.uuid4().hex


def new_server_id() -> str:
    return "server_" + uuid.uuid4().hex


def is_frontend_id(value: str) -> bool:
    return value.startswith(FRONTEND_PREFIX)
