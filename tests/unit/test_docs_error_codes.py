"""docs/protocol.md and the hub agree on the error codes: each documented code is one the code
knows (protocol/vocabulary.ErrorCode) and sends somewhere, and each code it knows is documented."""

from __future__ import annotations

import re
from pathlib import Path

from agentcomm.protocol.vocabulary import ErrorCode

ROOT = Path(__file__).resolve().parents[2]
PROTOCOL = ROOT / "docs" / "protocol.md"
SOURCE = ROOT / "src" / "agentcomm"
# Known to the contract (the described system's clients may test for it) and never sent by this
# hub: a frame over MAX_MESSAGE_BYTES is closed with 1009 before it is read (docs/protocol.md).
NOT_SENT = {ErrorCode.TOO_LARGE}


def documented_codes() -> list[str]:
    section = PROTOCOL.read_text().split("\n## Error codes\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"`([a-z]+(?:_[a-z]+)*)`", section)


def sent_codes() -> set[ErrorCode]:
    """The codes some module outside the vocabulary names (`ErrorCode.AGENT_OFFLINE`)."""
    named: set[ErrorCode] = set()
    for path in SOURCE.rglob("*.py"):
        if path.name == "vocabulary.py" or "generated" in path.parts:
            continue
        text = path.read_text()
        named.update(code for code in ErrorCode if f"ErrorCode.{code.name}" in text)
    return named


def test_every_documented_code_is_one_the_hub_knows() -> None:
    documented = documented_codes()
    assert documented, "docs/protocol.md has no codes under '## Error codes'"
    assert len(documented) == len(set(documented)), "a code is listed twice"
    assert set(documented) - {code.value for code in ErrorCode} == set()


def test_every_code_the_hub_knows_is_documented() -> None:
    assert {code.value for code in ErrorCode} - set(documented_codes()) == set()


def test_every_code_but_the_reserved_ones_is_sent_somewhere() -> None:
    assert set(ErrorCode) - NOT_SENT - sent_codes() == set()


def test_the_docs_say_agent_offline_for_an_unknown_agent_id() -> None:
    # What the hub answers (broker/routing.py): a newcomer who mistypes an agent id reads this.
    text = " ".join(PROTOCOL.read_text().split())
    assert "registered under, or whose agent is offline, is answered `ERROR agent_offline`" in text
    assert "to an unknown id → `ERROR unknown_receiver`" not in text
