"""KeyedTurns: operations with one key never overlap; other keys never wait."""

from __future__ import annotations

import asyncio

from agentcomm.bus.rabbitmq.turns import KeyedTurns


async def test_one_key_is_held_by_one_at_a_time() -> None:
    turns = KeyedTurns()
    inside: list[str] = []
    overlaps: list[int] = []

    async def work(name: str) -> None:
        await turns.take("m1")
        try:
            inside.append(name)
            overlaps.append(len(inside))
            await asyncio.sleep(0)
            inside.remove(name)
        finally:
            turns.give_back("m1")

    async with asyncio.timeout(5):
        await asyncio.gather(*(work(f"w{index}") for index in range(5)))
    assert overlaps == [1] * 5


async def test_other_keys_do_not_wait() -> None:
    turns = KeyedTurns()
    await turns.take("a")
    async with asyncio.timeout(5):
        await turns.take("b")
    turns.give_back("b")
    turns.give_back("a")


async def test_a_cancelled_waiter_leaves_the_key_to_the_others() -> None:
    turns = KeyedTurns()
    await turns.take("k")
    cancelled = asyncio.create_task(turns.take("k"))
    patient = asyncio.create_task(turns.take("k"))
    await asyncio.sleep(0)
    cancelled.cancel()
    turns.give_back("k")
    async with asyncio.timeout(5):
        await patient
    assert cancelled.cancelled()
    turns.give_back("k")
