"""Malformed inputs made from valid ones, for the fuzz tests of the gRPC services."""

from __future__ import annotations

import random


def mutated(rng: random.Random, valid: bytes, *, random_size: int) -> bytes:
    """One of four at random: up to `random_size` random bytes, or `valid` with a few bytes
    flipped, cut short, or extended with random bytes."""
    kind = rng.randrange(4)
    if kind == 0:
        return rng.randbytes(rng.randrange(1, random_size))
    data = bytearray(valid)
    if kind == 1 and data:
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif kind == 2:
        data = data[: rng.randrange(len(data) + 1)]
    else:
        data += rng.randbytes(rng.randrange(1, 20))
    return bytes(data)
