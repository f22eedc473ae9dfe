"""uvicorn's HTTP protocol (httptools), with a deadline on a request's head.

uvicorn closes an idle keep-alive connection after a few seconds, but a connection that sends
part of a request line or of its headers and then nothing stays open for good: 1,500 of them
were all still open 20 s later. Here a request's head must be complete within
HTTP_REQUEST_TIMEOUT of the connection (or of the request's first byte); otherwise the
connection is answered 408 and closed. The body has its own deadline (`server/http/guard.py`).
A WebSocket upgrade ends the head like any request.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)

_TIMED_OUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class HubHttpProtocol(HttpToolsProtocol):
    # Seconds a request's head may take (HTTP_REQUEST_TIMEOUT; see `with_request_timeout`).
    head_timeout = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._expect_head()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._expect_head()

    def on_headers_complete(self) -> None:
        self._head_arrived()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_arrived()
        super().connection_lost(exc)

    def _expect_head(self) -> None:
        if self._head_deadline is None:
            self._head_deadline = self.loop.call_later(self.head_timeout, self._head_too_slow)

    def _head_arrived(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_too_slow(self) -> None:
        self._head_deadline = None
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being answered: its head did arrive
        if not self.transport.is_closing():
            log.info("Closing an HTTP connection whose request did not arrive in time")
            self.transport.write(_TIMED_OUT)
            self.transport.close()


def with_request_timeout(seconds: float) -> type[HubHttpProtocol]:
    """The protocol class for uvicorn (which makes each connection's protocol itself), with
    `seconds` as the deadline of a request's head."""
    return type("HubHttpProtocol", (HubHttpProtocol,), {"head_timeout": seconds})
