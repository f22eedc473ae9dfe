"""New message ids: 32 hex digits (the format of a uuid4's hex), valid ids, never repeated."""

from __future__ import annotations

import re

from agentcomm.protocol.ids import is_valid_id, new_message_id


def test_message_ids_are_32_hex_digits_and_unique() -> None:
    ids = [new_message_id() for _ in range(10_000)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", value) for value in ids)
    assert all(is_valid_id(value) for value in ids)
    assert len(set(ids)) == len(ids)
