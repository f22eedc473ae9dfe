"""Identifier formats (PROTOCOL §1) and their generators."""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from dataclasses import dataclass

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


# -- answer ids ------------------------------------------------------------------------------
#
# An answer (REPLY, REPLY_CHUNK, ERROR) to a frontend's TEXT may come back to the server without
# any of the fields that say whom it answers: the described system's broker bounces an answer
# addressed to a frontend as an ERROR to "Server" that keeps only its message_id, sender and
# text. An id made by `answer_message_id` still says it: what kind of answer it is, the
# frontend that asked, and a digest of the TEXT's id, followed by random digits so that every
# answer (and every attempt at one) has an id of its own:
#
#     reply.web_1a2b….<16 hex: digest of the TEXT's id>.<16 random hex>
#     error-cancelled.web_1a2b….<digest>.<random>
#
# Any other id is as good as ever; only these can be matched when nothing else survives.

ANSWER_KIND_REPLY = "reply"
ANSWER_KIND_ERROR = "error"
_ANSWER_REF_HEX = 16
_ANSWER_RE = re.compile(
    r"^(?P<kind>reply|error(?:-(?P<code>[a-z_]{1,40}))?)"
    r"\.(?P<frontend>web_[A-Za-z0-9_:-]{1,64})"
    r"\.(?P<ref>[0-9a-f]{16})\.[0-9a-f]{16}$"
)


@dataclass(frozen=True, slots=True)
class AnswerId:
    """What an answer id made by `answer_message_id` says."""

    frontend_id: str
    text_ref: str  # `text_ref` of the answered TEXT's id
    is_error: bool
    error_code: str | None  # the ERROR's code, when the id carries one


def text_ref(message_id: str) -> str:
    """The digest of a TEXT's id that the ids of its answers carry."""
    return hashlib.blake2b(message_id.encode(), digest_size=_ANSWER_REF_HEX // 2).hexdigest()


def answer_message_id(
    asker_id: str | None, answered_id: str, *, error_code: str | None = None
) -> str:
    """A new id for an answer to message `answered_id` of `asker_id` (an ERROR when
    `error_code` is given): one naming what it answers when the asker is a frontend and the id
    fits, a plain new id otherwise."""
    if not asker_id or not is_frontend_id(asker_id):
        return new_message_id()
    kind = ANSWER_KIND_REPLY if error_code is None else f"{ANSWER_KIND_ERROR}-{error_code}"
    made = f"{kind}.{asker_id}.{text_ref(answered_id)}.{os.urandom(8).hex()}"
    return made if _ANSWER_RE.match(made) else new_message_id()


def parse_answer_id(message_id: str) -> AnswerId | None:
    """What an id made by `answer_message_id` says; None for any other id."""
    match = _ANSWER_RE.match(message_id)
    if match is None:
        return None
    return AnswerId(
        frontend_id=match["frontend"],
        text_ref=match["ref"],
        is_error=match["kind"] != ANSWER_KIND_REPLY,
        error_code=match["code"],
    )
