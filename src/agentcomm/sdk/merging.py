"""Streamed pieces merged into fewer REPLY_CHUNKs (the agent's `stream_merge_ms`).

Without merging every piece a handler yields is one chunk, sent once the one before it was
accepted: a model that writes faster than the hub takes chunks is slowed down to the hub's
pace, one chunk at a time. With merging, the handler is never held up: the pieces it yields
while a chunk is on its way wait, and leave together as the next chunk. With a window above
zero the sender also waits that long after the first waiting piece for more to join it, at
the cost of that much delay. Under light load nothing changes (each piece is alone when its
turn comes); under heavy load chunks grow and their number falls, which is what lets many
streams share a hub. The wire is the same: a chunk's `text_delta` is simply longer, `seq`
still counts chunks, and the final REPLY still carries the whole text and the chunk count.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

# Above this many characters waiting, a chunk takes no more (the rest is the next chunk), so
# that no merged chunk nears a hub's message size limit.
MAX_CHUNK_CHARS = 16 * 1024

SendChunk = Callable[[int, str], Awaitable[None]]


async def stream_merged(
    parts: AsyncIterator[Any],
    send: SendChunk,
    window: float,
    *,
    max_chars: int = MAX_CHUNK_CHARS,
) -> tuple[str, int]:
    """Sends what `parts` yields as chunks `send(seq, delta)`, merging the pieces that wait
    for the chunk before them (and, with `window` > 0 s, those yielded within `window` of the
    first waiting one). Returns the whole text and how many chunks were sent. Raises what
    `send` raised (at the latest once `parts` is exhausted), TypeError for a piece that is not
    str; the caller closes `parts`."""
    whole: list[str] = []
    waiting: list[str] = []
    wake = asyncio.Event()
    finished = asyncio.Event()
    sent = 0

    async def sender() -> None:
        nonlocal sent
        while True:
            await wake.wait()
            if window > 0 and not finished.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(window):
                        await finished.wait()
            wake.clear()
            if not waiting:
                if finished.is_set():
                    return
                continue
            delta = _take(waiting, max_chars)
            await send(sent, delta)
            sent += 1
            if waiting or finished.is_set():
                wake.set()

    task = asyncio.create_task(sender())
    try:
        async for piece in parts:
            if not isinstance(piece, str):
                raise TypeError(f"The message handler yielded {type(piece).__name__}, not str.")
            if not piece:
                continue  # an empty chunk would only use up a seq number
            whole.append(piece)
            waiting.append(piece)
            wake.set()
            if task.done():
                break  # sending failed: its error is raised below
        finished.set()
        wake.set()
        await task
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return "".join(whole), sent


def _take(waiting: list[str], max_chars: int) -> str:
    """The waiting pieces that fit in one chunk (at least one), removed from `waiting`."""
    size = 0
    count = 0
    for piece in waiting:
        if count and size + len(piece) > max_chars:
            break
        size += len(piece)
        count += 1
    taken = "".join(waiting[:count])
    del waiting[:count]
    return taken
