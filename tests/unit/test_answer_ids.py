"""Answer ids that name the TEXT they answer (protocol/ids.py): what survives when a broker
keeps nothing of an answer but its id."""

from __future__ import annotations

from agentcomm.protocol.ids import (
    answer_message_id,
    is_valid_id,
    new_frontend_id,
    parse_answer_id,
    text_ref,
)

ALICE = new_frontend_id("abababab")


def test_a_reply_id_names_the_frontend_and_the_text_and_is_new_every_time() -> None:
    first, second = (answer_message_id(ALICE, "m-1") for _ in range(2))
    assert first != second
    for made in (first, second):
        assert is_valid_id(made)
        named = parse_answer_id(made)
        assert named is not None
        assert (named.frontend_id, named.text_ref) == (ALICE, text_ref("m-1"))
        assert (named.is_error, named.error_code) == (False, None)


def test_an_error_id_carries_its_code() -> None:
    named = parse_answer_id(answer_message_id(ALICE, "m-1", error_code="agent_offline"))
    assert named is not None
    assert (named.is_error, named.error_code) == (True, "agent_offline")


def test_the_digest_tells_texts_apart_and_fits_any_message_id() -> None:
    longest = "x" * 128
    assert text_ref("m-1") != text_ref("m-2")
    assert len(answer_message_id(ALICE, longest)) <= 128
    named = parse_answer_id(answer_message_id(ALICE, longest))
    assert named is not None
    assert named.text_ref == text_ref(longest)


def test_answers_to_anyone_but_a_frontend_get_a_plain_id() -> None:
    for asker in ("echo", None, "", "web_" + "a" * 120):
        made = answer_message_id(asker, "m-1")
        assert parse_answer_id(made) is None
        assert is_valid_id(made)


def test_ordinary_ids_are_not_taken_for_answer_ids() -> None:
    for other in ("m-1", "0" * 32, "reply.m-1", f"reply.{ALICE}.zz.yy", f"x.{ALICE}.0.0"):
        assert parse_answer_id(other) is None
