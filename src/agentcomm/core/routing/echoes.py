"""A sender's status echoes in order: `routed` never overtakes `pending`.

The broker may route a frontend's message before the bus confirmed the server's publish of it,
so the `routed` echo could reach the sender ahead of `pending`. While a message's `pending`
echo has not gone out, whoever would echo a later status waits for it (briefly: never longer
than PENDING_ECHO_WAIT_SECONDS).
"""

from __future__ import annotations

import asyncio

from agentcomm.core.routing.effects import Plan, WaitFor

PENDING_ECHO_WAIT_SECONDS = 5.0

Waiters = list[asyncio.Future[None]]


class EchoOrder:
    def __init__(self) -> None:
        # message_id of a frontend's message on its way to the bus -> who waits for its
        # "pending" echo. The entry goes as soon as the echo went out: a message not found
        # here needs no waiting. A future is made only when someone has to wait.
        self._unechoed: dict[str, Waiters] = {}

    def expect(self, message_id: str) -> Waiters:
        """`message_id` is being published; its `pending` echo is yet to go out."""
        waiters: Waiters = []
        self._unechoed[message_id] = waiters
        return waiters

    def echoed(self, message_id: str, waiters: Waiters) -> None:
        """The `pending` echo went out (or never will): whoever waits for it goes on."""
        if self._unechoed.get(message_id) is waiters:
            del self._unechoed[message_id]
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def stop_waiting(self, message_id: str) -> None:
        """Later steps of `message_id` need not wait (it failed); those waiting already go on
        when the echo goes out."""
        self._unechoed.pop(message_id, None)

    def wait(self, message_id: str) -> Plan[None]:
        """Waits until the `pending` echo of `message_id` went out, if it has not yet."""
        waiters = self._unechoed.get(message_id)
        if waiters is None:
            return
        echoed = asyncio.get_running_loop().create_future()
        waiters.append(echoed)
        yield WaitFor(
            echoed,
            PENDING_ECHO_WAIT_SECONDS,
            f"Pending echo of {message_id} never came; routing on",
        )
