"""Turns by key: one holder per key at a time, others with the same key wait.

Used where two operations on the same message id must not overlap (two deliveries of one
message, two publishes with one id). That almost never happens, so taking a free key costs a
dict entry and nothing else; waiters get a future only when a key is really taken.
"""

from __future__ import annotations

import asyncio


class KeyedTurns:
    def __init__(self) -> None:
        # key -> futures of those waiting for it; present while the key is held.
        self._held: dict[str, list[asyncio.Future[None]]] = {}

    async def take(self, key: str) -> None:
        """Waits until `key` is free, then holds it until `give_back(key)`."""
        while (waiting := self._held.get(key)) is not None:
            turn = asyncio.get_running_loop().create_future()
            waiting.append(turn)
            await turn
        self._held[key] = []

    def give_back(self, key: str) -> None:
        # Everyone waiting looks again; the first to run takes the key, the rest wait anew.
        for turn in self._held.pop(key):
            if not turn.done():
                turn.set_result(None)
