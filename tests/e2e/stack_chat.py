"""A frontend for the end-to-end tests that keeps every frame it receives, in arrival order, and
answers the questions the tests ask of them: where did a message go, what came back for it,
is the stream complete, was there exactly one final answer.

It wraps the WebSocket client of tests/support/frontend.py (registered with
`capabilities.stream`, so reply chunks arrive too).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from tests.support.frontend import PRESENCE, Frame, Frontend

FINAL_TYPES = ("REPLY", "ERROR")


def new_id(prefix: str = "e2e") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


class Chat:
    """A registered, streaming frontend and the log of what it received."""

    def __init__(self, frontend: Frontend) -> None:
        self.frontend = frontend
        self.frames: list[Frame] = []

    @classmethod
    async def open(cls, ws_url: str, name: str = "e2e") -> Chat:
        frontend = await Frontend.registered(ws_url, name, capabilities={"stream": True})
        chat = cls(frontend)
        assert frontend.first_status is not None
        chat.frames.append(frontend.first_status)
        return chat

    async def close(self) -> None:
        await self.frontend.close()

    async def __aenter__(self) -> Chat:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- sending ---------------------------------------------------------------------------------

    async def send_text(
        self,
        text: str,
        *,
        receiver_id: str | None = None,
        conversation_id: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> str:
        """Sends a TEXT with a message_id of its own; returns that id."""
        message_id = new_id("text")
        frame: Frame = {"message_type": "TEXT", "message_id": message_id, "text_payload": text}
        if receiver_id is not None:
            frame["receiver_id"] = receiver_id
        if conversation_id is not None:
            frame["conversation_id"] = conversation_id
        if metadata is not None:
            frame["metadata"] = metadata
        await self.frontend.send(frame)
        return message_id

    async def cancel(self, text_id: str, *, receiver_id: str | None = None) -> str:
        message_id = new_id("cancel")
        frame: Frame = {
            "message_type": "CANCEL",
            "message_id": message_id,
            "in_reply_to_message_id": text_id,
        }
        if receiver_id is not None:
            frame["receiver_id"] = receiver_id
        await self.frontend.send(frame)
        return message_id

    # -- receiving -------------------------------------------------------------------------------

    def _take(self) -> None:
        self.frames.extend(self.frontend.take_buffered())

    async def until(
        self, condition: Callable[[], bool], *, timeout: float, what: str
    ) -> list[Frame]:
        """Reads frames until `condition` holds; fails after `timeout` with what was received."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            self._take()
            if condition():
                return self.frames
            remaining = deadline - loop.time()
            if remaining <= 0 or self.frontend.is_closed:
                raise AssertionError(
                    f"Timed out after {timeout} s waiting for {what} "
                    f"(socket closed: {self.frontend.is_closed}); received:\n{self.describe()}"
                )
            try:
                self.frames.append(await self.frontend.next(timeout=remaining))
            except AssertionError:
                continue  # the deadline passed, or the socket closed: checked above

    async def settle(self, *, quiet: float = 0.5, timeout: float = 5.0) -> None:
        """Takes in everything the server sent until now (REQUEST_AGENT_STATUS is answered in
        order after it), then listens `quiet` seconds more for stragglers from the bus."""
        await self.frontend.send({"message_type": "REQUEST_AGENT_STATUS"})
        count = len(self.frames)
        await self.until(
            lambda: any(
                f.get("message_type") == PRESENCE and f.get("is_full_update") is True
                for f in self.frames[count:]
            ),
            timeout=timeout,
            what="the answer to REQUEST_AGENT_STATUS",
        )
        loop = asyncio.get_running_loop()
        end = loop.time() + quiet
        while (remaining := end - loop.time()) > 0:
            try:
                self.frames.append(await self.frontend.next(timeout=remaining))
            except AssertionError:
                break
        self._take()

    # -- questions about the log -----------------------------------------------------------------

    def finals(self, text_id: str) -> list[Frame]:
        """The final answers (REPLY or ERROR) to a TEXT."""
        return [
            f
            for f in self.frames
            if f.get("message_type") in FINAL_TYPES and f.get("in_reply_to_message_id") == text_id
        ]

    def chunks(self, text_id: str) -> list[Frame]:
        return [
            f
            for f in self.frames
            if f.get("message_type") == "REPLY_CHUNK" and f.get("in_reply_to_message_id") == text_id
        ]

    def echoes(self, text_id: str) -> list[Frame]:
        """The status echoes of the sender's own TEXT."""
        return [
            f
            for f in self.frames
            if f.get("message_type") == "TEXT" and f.get("message_id") == text_id
        ]

    def routed_to(self, text_id: str) -> str | None:
        for echo in self.echoes(text_id):
            if echo.get("routing_status") == "routed":
                receiver: str | None = echo.get("receiver_id")
                return receiver
        return None

    def has_final(self, text_id: str) -> bool:
        return bool(self.finals(text_id))

    def presence_deltas(self) -> list[Frame]:
        return [
            f
            for f in self.frames
            if f.get("message_type") == PRESENCE and f.get("is_full_update") is False
        ]

    def saw_offline(self, agent_id: str) -> bool:
        """A presence delta said `agent_id` is offline."""
        return any(
            info.get("agent_id") == agent_id and info.get("is_online") is False
            for delta in self.presence_deltas()
            for info in delta.get("agents", [])
        )

    async def final(self, text_id: str, *, timeout: float = 10.0) -> Frame:
        """Waits for the final answer to `text_id` and returns it."""
        await self.until(
            lambda: self.has_final(text_id), timeout=timeout, what=f"{text_id}'s answer"
        )
        return self.finals(text_id)[0]

    async def all_finals(self, text_ids: Iterable[str], *, timeout: float = 15.0) -> None:
        ids = list(text_ids)
        await self.until(
            lambda: all(self.has_final(i) for i in ids),
            timeout=timeout,
            what=f"answers to all of {ids}",
        )

    async def exactly_one_final_each(self, text_ids: Iterable[str]) -> None:
        """Every TEXT ends in exactly one final REPLY or ERROR, also after the stragglers."""
        ids = list(text_ids)
        await self.all_finals(ids, timeout=20)
        await self.settle()
        counts = {text_id: len(self.finals(text_id)) for text_id in ids}
        assert all(count == 1 for count in counts.values()), (counts, self.describe())

    def stream_text(self, text_id: str) -> str:
        """Checks the reply chunks of `text_id` against its final REPLY and returns the text.

        Every chunk shares the REPLY's message_id, their seq are 0, 1, 2 ... without a gap or a
        repeat, and joined in seq order they are the REPLY's text.
        """
        finals = self.finals(text_id)
        assert len(finals) == 1, f"expected one final answer to {text_id}: {finals}"
        reply = finals[0]
        assert reply["message_type"] == "REPLY", reply
        chunks = self.chunks(text_id)
        assert chunks, f"{text_id} was answered without REPLY_CHUNKs"
        assert {c["message_id"] for c in chunks} == {reply["message_id"]}, (chunks, reply)
        seqs = sorted(c["seq"] for c in chunks)
        assert seqs == list(range(len(chunks))), f"seq of {text_id}'s chunks: {seqs}"
        joined = "".join(c["text_delta"] for c in sorted(chunks, key=lambda c: c["seq"]))
        assert joined == reply["text_payload"], (joined, reply["text_payload"])
        text: str = reply["text_payload"]
        return text

    def describe(self, limit: int = 60) -> str:
        lines = []
        for f in self.frames[-limit:]:
            kind = f.get("message_type")
            if kind == PRESENCE:
                agents = ", ".join(
                    f"{a.get('agent_id')}:{a.get('status')}" for a in f.get("agents", [])
                )
                lines.append(f"  {kind} full={f.get('is_full_update')} [{agents}]")
                continue
            fields = (
                "message_id",
                "routing_status",
                "receiver_id",
                "in_reply_to_message_id",
                "seq",
                "error_code",
                "text_payload",
                "text_delta",
            )
            shown = ", ".join(f"{k}={f[k]!r}" for k in fields if f.get(k) is not None)
            lines.append(f"  {kind} {shown}")
        return "\n".join(lines)
