"""The one exception bad input turns into, carrying the contract's error code."""

from __future__ import annotations

from agentcomm.protocol.vocabulary import ErrorCode


class ProtocolError(Exception):
    """Input that breaks the wire contract; answered with an ERROR frame or a gRPC status."""

    def __init__(self, code: ErrorCode, text: str, in_reply_to: str | None = None) -> None:
        super().__init__(text)
        self.code = code
        self.text = text
        self.in_reply_to = in_reply_to
