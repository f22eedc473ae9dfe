"""What a frontend connection leaves behind once it is closed: nothing. Connection state may be
frozen out of garbage collections (`server/collector.py`), so it must be freed by reference
counting alone, without a reference cycle waiting for a full collection."""

from __future__ import annotations

import gc
import weakref

from agentcomm.server.testing import running_hub
from tests.support.frontend import Frontend
from tests.support.waiting import wait_until

TIMEOUT = 15.0


async def test_a_closed_frontend_connection_is_freed_without_the_garbage_collector() -> None:
    async with running_hub() as hub:
        frontend = await Frontend.registered(hub.ws_url, "short-lived")
        await wait_until(lambda: len(hub.hub.state.connections) == 1, timeout=TIMEOUT)
        (link,) = hub.hub.state.connections
        protocol_ref = weakref.ref(link._output)  # the uvicorn protocol lending its transport
        del link
        gc.collect()
        gc.disable()
        try:
            await frontend.close()
            await wait_until(
                lambda: protocol_ref() is None,
                timeout=TIMEOUT,
                what="the closed connection's protocol (and all it holds) to be freed",
            )
        finally:
            gc.enable()
