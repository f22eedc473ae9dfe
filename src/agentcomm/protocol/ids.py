"""Identifier formats (PROTOCOL §1) and their generators."""

from __future__ import annotations

import re
import uuid

ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
_ID_RE = re.compile(ID_PATTERN)

FRONTEND_PREFIX = "web_"


def is_valid_id(value: str) -> bool:
    return bool(_ID_RE.match(value))


def new_message_id() -> str:
    return uuid.uuid4().hex


def new_frontend_id() -> str:
    return FRONTEND_PREFIX + uuid.uuid4().hex


def new_agent_id() -> str:
    return "agent_" + uuid.uuid4().hex


def new_broker_id() -> str:
    return "broker_" + uuid.uuid4().hex


def new_server_id() -> str:
    return "server_" + uuid.uuid4().hex


def is_frontend_id(value: str) -> bool:
    return value.startswith(FRONTEND_PREFIX)
