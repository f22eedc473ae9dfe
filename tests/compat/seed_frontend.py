"""A frontend that speaks as the described system's UI does (`shared/seed/server-README.md`,
flows 1 and 4): it registers, reads its `frontend_id` and the full agent list, sends `TEXT`s
stamped with its own id and a UUID, and follows each by the status echoes it knows
(`pending`, `routed`, `error`, the reason in `routing_status_message`) until a `REPLY` or an
`ERROR` answers it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from tests.support.frontend import PRESENCE, Frame, Frontend

# The statuses that system's UI knows; anything else it shows as unknown.
KNOWN_STATUSES = frozenset({"pending", "routed", "error"})
WAIT = 15.0


@dataclass
class Asked:
    message_id: str
    statuses: list[str] = field(default_factory=list)
    echoes: list[Frame] = field(default_factory=list)
    answer: Frame | None = None


class SeedFrontend:
    def __init__(self, frontend: Frontend) -> None:
        self.frontend = frontend

    @classmethod
    async def connect(
        cls, ws_url: str, *, capabilities: dict[str, Any] | None = None
    ) -> SeedFrontend:
        # Flow 1: connect, REGISTER_FRONTEND, REGISTER_FRONTEND_RESPONSE {frontend_id}, then
        # AGENT_STATUS_UPDATE with the full list (Frontend.registered checks that order).
        frontend = await Frontend.registered(
            ws_url, "seed UI", capabilities=capabilities, timeout=WAIT
        )
        return cls(frontend)

    @property
    def frontend_id(self) -> str:
        assert self.frontend.frontend_id is not None
        return self.frontend.frontend_id

    @property
    def agent_list(self) -> list[Frame]:
        assert self.frontend.first_status is not None
        agents: list[Frame] = self.frontend.first_status["agents"]
        return agents

    async def ask(self, text: str, receiver_id: str | None = None) -> Asked:
        """Flow 4: sends a TEXT and follows it to its answer."""
        frame: Frame = {
            "message_type": "TEXT",
            "message_id": uuid.uuid4().hex,
            "sender_id": self.frontend_id,
            "text_payload": text,
        }
        if receiver_id is not None:
            frame["receiver_id"] = receiver_id
        await self.frontend.send(frame)
        asked = Asked(frame["message_id"])
        while asked.answer is None:
            got = await self.frontend.next(
                lambda f: (
                    f.get("message_type") != PRESENCE
                    and asked.message_id in (f.get("message_id"), f.get("in_reply_to_message_id"))
                ),
                timeout=WAIT,
            )
            if got["message_type"] == "TEXT":
                asked.echoes.append(got)
                asked.statuses.append(got["routing_status"])
            else:
                asked.answer = got
        return asked

    async def nothing_more(self) -> list[Frame]:
        """Whatever else reached this frontend (presence aside), once the server has answered
        a request sent after it."""
        return self.frontend.non_presence(await self.frontend.barrier(timeout=WAIT))

    async def close(self) -> None:
        await self.frontend.close()
